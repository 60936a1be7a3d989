// Who is signed in. The credential itself is an HttpOnly cookie the page never sees.
import { api } from "./api.js";

const subs = new Set();

export const session = {
  user: null,
  subscribe(fn) { subs.add(fn); return () => subs.delete(fn); },
  notify() { for (const fn of subs) fn(); },

  /** Trade a token for the session cookie; throws ApiError (401) when it is not valid. */
  async signIn(token) {
    this.user = await api("/session", { method: "POST", body: { token: token.trim() }, quiet401: true });
    this.notify();
    return this.user;
  },

  /** Is the cookie (still) good? */
  async load() {
    try {
      this.user = (await api("/session")).user;
    } catch {
      this.user = null;
    }
    this.notify();
    return this.user !== null;
  },

  async signOut() {
    try { await api("/session", { method: "DELETE" }); } catch { /* signed out either way */ }
    this.user = null;
    this.notify();
  },
};
