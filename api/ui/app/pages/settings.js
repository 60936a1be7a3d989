import { html } from "../lib.js";
export function SettingsPage() { return html`<main class="page"><h1>SettingsPage</h1></main>`; }
