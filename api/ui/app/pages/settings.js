// /settings: API tokens (created once-shown, revoked), theme, shortcuts; admins: users.
import { html, useState } from "../lib.js";
import { api } from "../api.js";
import { navigate } from "../router.js";
import { CopyButton, Empty, Problem, confirmDialog, toast, usePoll } from "../components.js";
import { session } from "../session.js";
import { SHORTCUTS, getTheme, setTheme } from "../prefs.js";
import { fmtAgo } from "../util/format.js";

function Once({ token, what }) {
  return html`<div class="stack" data-testid="token-once"><div class="small"><b>${what}</b>: copy it now, it is not shown again.</div>
    <div class="token-once"><code>${token}</code><${CopyButton} text=${token} /></div></div>`;
}

function Tokens() {
  const [tokens, setTokens] = useState(null);
  const [name, setName] = useState("");
  const [created, setCreated] = useState(null);
  const [error, setError] = useState(null);
  const load = async () => { try { setTokens(await api("/tokens")); } catch (err) { setError(err); } };
  usePoll(load, 60000);
  const create = async (e) => {
    e.preventDefault();
    try { setCreated(await api("/tokens", { method: "POST", body: { name: name.trim() || "default" } })); setName(""); load(); } catch (err) { setError(err); }
  };
  const revoke = async (t) => {
    if (!(await confirmDialog(`Revoke ${t.name}?`, "Scripts and browsers using it are signed out at once.", "Revoke"))) return;
    try { await api(`/tokens/${t.id}`, { method: "DELETE" }); toast("Token revoked"); load(); } catch (err) { toast(err.message, { error: true }); }
  };
  return html`<div class="card" data-testid="tokens"><div class="card-head"><h2>API tokens</h2></div><div class="card-body stack">
    <form class="row" onSubmit=${create}><input value=${name} onInput=${(e) => setName(e.target.value)} placeholder="Token name, e.g. laptop-cli" aria-label="Token name" class="grow" /><button class="primary" type="submit">Create token</button></form>
    ${created && html`<${Once} token=${created.token} what=${`New token ${created.name}`} />`}
    <${Problem} error=${error} />
  </div>
  <div class="table-wrap"><table class="t"><thead><tr><th>Name</th><th>Prefix</th><th>Created</th><th>Last used</th><th>State</th><th></th></tr></thead>
    <tbody>${(tokens || []).map((t) => html`<tr style=${t.revoked_at ? { opacity: 0.5 } : undefined}><td><b>${t.name}</b></td><td class="mono">${t.prefix}…</td><td class="muted">${fmtAgo(t.created_at)}</td>
      <td class="muted">${t.last_used_at ? fmtAgo(t.last_used_at) : "never"}</td><td>${t.revoked_at ? "revoked" : "active"}</td>
      <td class="right">${!t.revoked_at && html`<button class="small ghost danger" onClick=${() => revoke(t)}>Revoke</button>`}</td></tr>`)}</tbody></table></div></div>`;
}

function Users() {
  const [users, setUsers] = useState(null);
  const [name, setName] = useState("");
  const [admin, setAdmin] = useState(false);
  const [created, setCreated] = useState(null);
  const [error, setError] = useState(null);
  const load = async () => { try { setUsers(await api("/users")); } catch (err) { setError(err); } };
  usePoll(load, 60000);
  const create = async (e) => {
    e.preventDefault();
    setError(null);
    try { setCreated(await api("/users", { method: "POST", body: { name: name.trim(), is_admin: admin } })); setName(""); load(); } catch (err) { setError(err); }
  };
  return html`<div class="card" data-testid="users"><div class="card-head"><h2>Users</h2><span class="tag">admin</span></div><div class="card-body stack">
    <form class="row wrap" onSubmit=${create}><input value=${name} onInput=${(e) => setName(e.target.value)} placeholder="User name (a-z, 0-9, . _ -)" aria-label="User name" class="grow" />
      <div class="field check"><input id="u-admin" type="checkbox" checked=${admin} onChange=${(e) => setAdmin(e.target.checked)} /><label for="u-admin">admin</label></div>
      <button class="primary" type="submit" disabled=${!name.trim()}>Add user</button></form>
    ${created && html`<${Once} token=${created.token.token} what=${`${created.user.name}'s first token`} />`}
    <${Problem} error=${error} />
  </div>
  <div class="table-wrap"><table class="t"><thead><tr><th>Name</th><th>Role</th><th>Created</th></tr></thead>
    <tbody>${(users || []).map((u) => html`<tr><td><b>${u.name}</b></td><td>${u.is_admin ? "admin" : "user"}</td><td class="muted">${fmtAgo(u.created_at)}</td></tr>`)}</tbody></table>
    ${users && users.length === 0 && html`<${Empty} title="No users" />`}</div></div>`;
}

export function SettingsPage() {
  const [theme, setThemeState] = useState(getTheme());
  const choose = (t) => { setTheme(t); setThemeState(t); };
  const signOut = async () => { await session.signOut(); navigate("/login"); };
  return html`<main class="page narrow" data-testid="settings">
    <div class="page-head"><div class="title"><h1>Settings</h1><div class="sub">Signed in as <b>${session.user && session.user.name}</b>${session.user && session.user.is_admin ? " (admin)" : ""}</div></div>
      <div class="actions"><button onClick=${signOut}>Sign out</button></div></div>
    <div class="stack">
      <div class="card"><div class="card-head"><h2>Appearance</h2></div><div class="card-body row">
        <span class="grow">Theme</span>
        <div class="seg" data-testid="theme">${["light", "dark", "system"].map((t) => html`<button class=${theme === t ? "on" : ""} onClick=${() => choose(t)}>${t}</button>`)}</div>
      </div></div>
      <${Tokens} />
      ${session.user && session.user.is_admin && html`<${Users} />`}
      <div class="card"><div class="card-head"><h2>Keyboard shortcuts</h2></div><div class="card-body"><div class="kbd-list">
        ${SHORTCUTS.map(([k, d]) => html`<span>${k.split(" ").map((x) => html`<kbd>${x}</kbd> `)}</span><span>${d}</span>`)}</div></div></div>
    </div>
  </main>`;
}
