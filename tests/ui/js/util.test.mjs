// Unit tests of the UI's pure modules (run by tests/ui/test_js_units.py with `node --test`).
import assert from "node:assert/strict";
import test from "node:test";

import { align, ema, minmax } from "../../../api/ui/app/util/smooth.js";
import { SSEParser } from "../../../api/ui/app/util/sse.js";
import { combinations, parseList } from "../../../api/ui/app/util/sweep.js";
import { fmtBytes, fmtDuration, fmtNum, fmtPct, networkName } from "../../../api/ui/app/util/format.js";

test("ema starts at the first raw value (debiased) and weight 0 is the raw curve", () => {
  const xs = [0, 1, 2, 3];
  const ys = [10, 0, 0, 0];
  assert.equal(ema(xs, ys, 0.9)[0], 10);
  assert.deepEqual(ema(xs, ys, 0), ys);
  const s = ema(xs, ys, 0.5);
  assert.ok(s[1] < 10 && s[1] > 0);
});

test("ema smooths a sparse series like a dense one of the same shape", () => {
  const f = (x) => Math.sin(x / 15) * 10 + x / 10;
  const dense = Array.from({ length: 401 }, (_, i) => i / 4);
  const sparse = Array.from({ length: 26 }, (_, i) => i * 4);
  const unit = 100 / 200;
  const a = ema(dense, dense.map(f), 0.9, unit).at(-1);
  const b = ema(sparse, sparse.map(f), 0.9, unit).at(-1);
  // a per-point EMA (TensorBoard's) differs here by several units; this one by a few hundredths
  assert.ok(Math.abs(a - b) < 0.25, `${a} vs ${b}`);
});

test("ema leaves gaps as gaps", () => {
  assert.equal(ema([0, 1, 2], [1, null, 3], 0.5)[1], null);
});

test("minmax keeps a spike, the first and the last point", () => {
  const xs = Array.from({ length: 1000 }, (_, i) => i);
  const ys = xs.map((i) => (i === 507 ? 100 : 1));
  const [ox, oy] = minmax(xs, ys, 50);
  assert.ok(ox.length <= 102);
  assert.ok(oy.includes(100));
  assert.equal(ox[0], 0);
  assert.equal(ox[ox.length - 1], 999);
});

test("align puts series with their own x on one column, null where one has no point", () => {
  const [x, a, b] = align([{ x: [0, 2], y: [1, 3] }, { x: [1, 2], y: [5, 6] }]);
  assert.deepEqual(x, [0, 1, 2]);
  assert.deepEqual(a, [1, null, 3]);
  assert.deepEqual(b, [null, 5, 6]);
});

test("align buckets a union that grows past maxRows", () => {
  const s = (off) => ({ x: Array.from({ length: 300 }, (_, i) => i + off / 10), y: Array.from({ length: 300 }, () => off) });
  const out = align([s(1), s(2), s(3)], 100);
  assert.equal(out[0].length, 100);
  assert.equal(out.length, 4);
});

test("the SSE parser reads ids, kinds, multi-line data, comments and CRLF", () => {
  const got = [];
  const p = new SSEParser((e) => got.push(e));
  p.push("retry: 2000\n\n: keep-alive\n\nid: 7.2\nevent: metrics\ndata: {\"a\":");
  p.push("1}\n\nid: 8.2\r\nevent: status\r\ndata: x\r\ndata: y\r\n\r\n");
  assert.deepEqual(got, [
    { id: "7.2", event: "metrics", data: "{\"a\":1}" },
    { id: "8.2", event: "status", data: "x\ny" },
  ]);
});

test("sweep lists expand like the server's (one job per combination)", () => {
  assert.deepEqual(parseList("0.1, 0.01"), [0.1, 0.01]);
  assert.deepEqual(parseList(""), []);
  assert.throws(() => parseList("1.5", { integer: true }));
  assert.equal(combinations({ learning_rate: [0.1, 0.01, 0.001], batch_size: [32, 64] }).length, 6);
  assert.equal(combinations({ learning_rate: [0.1], batch_size: [] }).length, 1);
});

test("formatters", () => {
  assert.equal(fmtBytes(1536), "1.5 KB");
  assert.equal(fmtDuration(3725), "1h 02m");
  assert.equal(fmtDuration(2.25), "2.3s");
  assert.equal(fmtPct(0.9567, 1), "95.7%");
  assert.equal(fmtNum(null), "–");
  assert.equal(networkName({ network: { kind: "standard", name: "lenet" } }), "lenet");
  assert.equal(networkName({ network: { kind: "custom", layers: [1, 2, 3] } }), "custom (3 layers)");
});
