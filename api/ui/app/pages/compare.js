import { html } from "../lib.js";
export function ComparePage() { return html`<main class="page"><h1>ComparePage</h1></main>`; }
