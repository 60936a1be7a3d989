import { html } from "../lib.js";
export function FleetPage() { return html`<main class="page"><h1>FleetPage</h1></main>`; }
