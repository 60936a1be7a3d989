import { html } from "../lib.js";
export function NewJobPage() { return html`<main class="page"><h1>NewJobPage</h1></main>`; }
