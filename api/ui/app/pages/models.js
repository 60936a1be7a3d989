import { html } from "../lib.js";
export function ModelsPage() { return html`<main class="page"><h1>ModelsPage</h1></main>`; }
