import { html } from "../lib.js";
export function QueuePage() { return html`<main class="page"><h1>QueuePage</h1></main>`; }
