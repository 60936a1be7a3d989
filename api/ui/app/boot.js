// Runs before the first paint (a blocking classic script: CSP forbids inline ones), so a dark
// theme never flashes white. main.js owns the theme afterwards.
(function () {
  var t = "system";
  try { t = localStorage.getItem("digits.theme") || "system"; } catch (e) { /* private mode */ }
  var dark = t === "dark" || (t === "system" && window.matchMedia("(prefers-color-scheme: dark)").matches);
  document.documentElement.dataset.theme = dark ? "dark" : "light";
})();

// The modules of the page this visit opens (main.js imports pages when shown), fetched with
// the others; [path prefix, modules], the first that matches ("/" only itself)
(function () {
  var pages = [
    ["/jobs/new", ["job-new.js", "dataset-new.js"]],
    ["/jobs/", ["job.js", "job-tabs.js", "results.js"]],
    ["/datasets/new", ["dataset-new.js"]],
    ["/datasets/", ["dataset.js"]],
    ["/compare", ["compare.js"]],
    ["/studies", ["study.js", "compare.js"]],
    ["/queue", ["queue.js"]],
    ["/fleet", ["fleet.js"]],
    ["/models", ["models.js"]],
    ["/settings", ["settings.js"]],
  ];
  var path = location.pathname;
  var files = path === "/" ? ["home.js"] : [];
  for (var i = 0; i < pages.length && !files.length; i++) {
    if (path.indexOf(pages[i][0]) === 0) files = pages[i][1];
  }
  files.forEach(function (f) {
    var link = document.createElement("link");
    link.rel = "modulepreload";
    link.href = "/ui/app/pages/" + f;
    document.head.appendChild(link);
  });
})();

// The first data of the page, asked for now, while the modules load (18 or more of them, a
// quarter of a second on two busy cores), not after: the session, then, signed in, what the page
// shows first. api.js takes each answer by its path; pages/home.js and pages/compare.js ask
// for the same paths (tests/ui/test_browser.py checks each is fetched once).
(function () {
  if (location.pathname === "/login" || location.hash.indexOf("#token=") === 0) return;
  var early = (window.__digitsEarly = {});
  var get = function (path) {
    early[path] = {
      at: performance.now(),
      answer: fetch("/api/v1" + path, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; }, function () { return null; }),
    };
    return early[path].answer;
  };
  var first = function () {
    var q = new URLSearchParams(location.search);
    if (location.pathname === "/") return ["/jobs?per_page=50"];
    var group = q.get("group");
    var x = q.get("x") || "epoch";
    if (location.pathname !== "/compare" || !group || ["epoch", "step", "time"].indexOf(x) < 0) return [];
    var runs = "/jobs?group=" + encodeURIComponent(group) + "&page=1&per_page=200";
    var series = new URLSearchParams({ group: group, names: "train.loss", max_points: "400", columns: x + ",value" });
    return [runs, "/metrics?" + series];
  };
  get("/session").then(function (s) {
    if (s && s.user) first().forEach(get);
  });
})();
