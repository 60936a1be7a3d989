// /login: paste a token (or arrive through the one-click #token= link).
import { html, useState } from "../lib.js";
import { navigate } from "../router.js";
import { Problem } from "../components.js";
import { session } from "../session.js";

export function LoginPage() {
  const params = new URLSearchParams(location.search);
  const [token, setToken] = useState("");
  const [error, setError] = useState(params.get("error") === "token" ? { problem: { title: "Sign-in link not valid", detail: "the token in the link is unknown or was revoked; paste a current one" } } : null);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await session.signIn(token);
      const next = params.get("next");
      navigate(next && next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/login") ? next : "/", { replace: true });
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return html`<div class="login">
    <form class="card" onSubmit=${submit}>
      <div class="card-body">
        <div class="brand"><img src="/ui/favicon.svg" alt="" />digits</div>
        <div>
          <h1>Sign in</h1>
          <p class="muted" style=${{ margin: "6px 0 0" }}>Paste an API token. <code>digits up</code> prints one on first start,
            with a one-click link; <code>digits token create USER</code> makes more.</p>
        </div>
        <div class="field">
          <label for="token">API token</label>
          <input id="token" name="token" type="password" autocomplete="current-password" placeholder="dgt_…" autofocus
            value=${token} onInput=${(e) => setToken(e.target.value)} />
        </div>
        <${Problem} error=${error} />
        <button class="primary" type="submit" disabled=${busy || !token.trim()}>${busy ? "Signing in…" : "Sign in"}</button>
        <div class="small faint">The browser keeps the token in an HttpOnly cookie for this site only.
          The REST API and its docs are at <a href="/docs">/docs</a>.</div>
      </div>
    </form>
  </div>`;
}
