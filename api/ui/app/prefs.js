// User preferences kept in this browser: the theme; and the list of keyboard shortcuts.

export const SHORTCUTS = [
  ["/", "Search or filter this page"],
  ["g h", "Go home (jobs and datasets)"],
  ["g q", "Go to the queue"],
  ["g f", "Go to the fleet"],
  ["g m", "Go to pretrained models"],
  ["g s", "Go to settings"],
  ["n", "New training job"],
  ["?", "Show these shortcuts"],
  ["Esc", "Close a dialog"],
];

export function applyTheme(choice) {
  const dark = choice === "dark" || (choice === "system" && matchMedia("(prefers-color-scheme: dark)").matches);
  const next = dark ? "dark" : "light";
  if (document.documentElement.dataset.theme !== next) {
    document.documentElement.dataset.theme = next;
    window.dispatchEvent(new Event("themechange"));
  }
}
export function setTheme(choice) {
  try { localStorage.setItem("digits.theme", choice); } catch { /* private mode */ }
  applyTheme(choice);
}
export function getTheme() {
  try { return localStorage.getItem("digits.theme") || "system"; } catch { return "system"; }
}
matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => applyTheme(getTheme()));
