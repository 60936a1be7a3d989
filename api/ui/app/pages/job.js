import { html } from "../lib.js";
export function JobPage() { return html`<main class="page"><h1>JobPage</h1></main>`; }
