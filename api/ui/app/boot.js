// Runs before the first paint (a blocking classic script: CSP forbids inline ones), so a dark
// theme never flashes white. main.js owns the theme afterwards.
(function () {
  var t = "system";
  try { t = localStorage.getItem("digits.theme") || "system"; } catch (e) { /* private mode */ }
  var dark = t === "dark" || (t === "system" && window.matchMedia("(prefers-color-scheme: dark)").matches);
  document.documentElement.dataset.theme = dark ? "dark" : "light";
})();
