// Sweep expansion as the server does it (pure: unit-tested with `node --test`).

/** "0.1, 0.01" -> [0.1, 0.01]; "" -> []; throws on a value that is not a number. */
export function parseList(text, { integer = false } = {}) {
  const parts = String(text ?? "").split(",").map((s) => s.trim()).filter(Boolean);
  return parts.map((p) => {
    const v = Number(p);
    if (!Number.isFinite(v) || (integer && !Number.isInteger(v))) {
      throw new Error(`${p} is not ${integer ? "an integer" : "a number"}`);
    }
    return v;
  });
}

/** Every combination of the listed values: one job each. */
export function combinations(lists) {
  const keys = Object.keys(lists).filter((k) => lists[k].length);
  let out = [{}];
  for (const k of keys) {
    const next = [];
    for (const combo of out) for (const v of lists[k]) next.push({ ...combo, [k]: v });
    out = next;
  }
  return out;
}
