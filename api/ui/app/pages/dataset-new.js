import { html } from "../lib.js";
export function NewDatasetPage() { return html`<main class="page"><h1>NewDatasetPage</h1></main>`; }
