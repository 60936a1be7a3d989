import { html } from "../lib.js";
export function DatasetPage() { return html`<main class="page"><h1>DatasetPage</h1></main>`; }
