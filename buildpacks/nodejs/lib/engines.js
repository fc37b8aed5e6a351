// Whether a node version satisfies package.json's `engines.node`: prints `yes`, `no`, or
// `unknown` for a range this small checker does not read. It reads what people write: `20`,
// `20.x`, `>=18`, `^20.1.0`, `~20.1`, `18 || 20`, `>=18 <21`, an exact version, `*`.
"use strict";

function cmp(a, b) {
  for (let i = 0; i < 3; i++) {
    if ((a[i] || 0) !== (b[i] || 0)) return (a[i] || 0) < (b[i] || 0) ? -1 : 1;
  }
  return 0;
}

// One comparator: true, false, or null when it cannot be read.
function check(part, have) {
  const m = /^(>=|<=|>|<|=|\^|~)?v?(\d+|x|\*)(?:\.(\d+|x|\*))?(?:\.(\d+|x|\*))?$/.exec(part);
  if (!m) return null;
  const op = m[1] || "";
  const nums = [m[2], m[3], m[4]];
  const given = nums.findIndex((n) => n === undefined || n === "x" || n === "*");
  const parts = given === -1 ? 3 : given;
  const want = nums.slice(0, parts).map(Number);
  if (parts === 0) return true;
  const c = cmp(have, want);
  switch (op) {
    case ">=": return c >= 0;
    case ">": return parts === 3 ? c > 0 : have.slice(0, parts).join(".") !== want.join(".") && c > 0;
    case "<=": return c <= 0 || have.slice(0, parts).join(".") === want.join(".");
    case "<": return c < 0;
    case "^": return have[0] === want[0] && c >= 0;
    case "~": return have[0] === want[0] && (parts < 2 || have[1] === want[1]) && c >= 0;
    default: return have.slice(0, parts).join(".") === want.join(".");
  }
}

function satisfies(range, version) {
  const have = version.replace(/^v/, "").split(".").map(Number);
  for (const alternative of range.split("||")) {
    const parts = alternative.trim().split(/\s+/).filter(Boolean);
    const results = parts.map((part) => check(part, have));
    if (results.some((r) => r === null)) return "unknown";
    if (results.every(Boolean)) return "yes";
  }
  return "no";
}

module.exports = { satisfies };

if (require.main === module) {
  const [range, version] = process.argv.slice(2);
  process.stdout.write(satisfies(range, version));
}
