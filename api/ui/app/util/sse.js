// A Server-Sent Events parser for fetch() streams (pure: unit-tested with `node --test`).
// fetch instead of EventSource: it sees the HTTP status (a 404 means "use the fallback"), and
// it sends Last-Event-ID itself on every reconnect, also after a server restart.

export class SSEParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.reset();
  }

  reset() {
    this.id = null;
    this.event = "message";
    this.data = [];
  }

  /** Feed decoded text; complete events are dispatched as {id, event, data}. */
  push(text) {
    this.buffer += text;
    let nl;
    while ((nl = this.buffer.search(/\r\n|\n|\r/)) >= 0) {
      const line = this.buffer.slice(0, nl);
      const skip = this.buffer[nl] === "\r" && this.buffer[nl + 1] === "\n" ? 2 : 1;
      this.buffer = this.buffer.slice(nl + skip);
      this.line(line);
    }
  }

  line(line) {
    if (line === "") {
      if (this.data.length) {
        this.onEvent({ id: this.id, event: this.event, data: this.data.join("\n") });
      }
      this.reset();
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id") this.id = value;
  }
}
