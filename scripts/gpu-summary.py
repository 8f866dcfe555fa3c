#!/usr/bin/env python3
"""Gather the logs of scripts/gpu-check.sh into one summary: a markdown table of every
figure, then the same figures as JSON. Standard library only (the GPU machine has no venv).
Usage: scripts/gpu-summary.py LOG_DIR > LOG_DIR/summary.md"""
import json
import pathlib
import re
import sys


def load(path):
    """The JSON object in a bench log (the first '{' to the end), or None."""
    text = path.read_text(errors="replace")
    start = text.find("{")
    if start < 0:
        return None
    try:
        return json.loads(text[start:])
    except json.JSONDecodeError:
        return None


def test_results(path):
    """(passed, failed, ignored) summed over every 'test result:' line, and failing names."""
    if not path.exists():
        return None
    text = path.read_text(errors="replace")
    totals = [0, 0, 0]
    for m in re.finditer(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", text):
        for i in range(3):
            totals[i] += int(m.group(i + 1))
    failed = re.findall(r"^test (\S+) \.\.\. FAILED", text, re.M)
    return {"passed": totals[0], "failed": totals[1], "ignored": totals[2], "failing": failed}


def criterion(path):
    """Criterion's 'name  time: [lo mid hi]' lines (and throughput lines) of a bench log."""
    if not path.exists():
        return []
    rows, name = [], None
    for line in path.read_text(errors="replace").splitlines():
        m = re.match(r"^(\S.*?)?\s*time:\s+\[(.*?)\]", line)
        if m:
            # A long name stands on its own line before its figures.
            name = (m.group(1) or name or "?").strip()
            rows.append({"bench": name, "time": m.group(2).split()[2:4]})
            continue
        if line and not line[0].isspace():
            name = line.strip()
        m = re.match(r"^\s*(?:(\S.*?)\s+)?thrpt:\s+\[(.*?)\]", line)
        if m and rows:
            rows[-1]["thrpt"] = m.group(2).split()[2:4]
    return rows


def main():
    logs = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-logs")
    out = {"tests": test_results(logs / "tests.txt"), "benches": [], "speculation": [],
           "kernels": []}
    gpu = (logs / "nvidia-smi.txt")
    if gpu.exists():
        names = re.findall(r"NVIDIA [A-Z]\w+[^|]*?(?=\s{2,}|\|)", gpu.read_text(errors="replace"))
        out["card"] = names[0].strip() if names else None
    for f in sorted(logs.glob("*.json")):
        r = load(f)
        if isinstance(r, dict) and "speedup" in r:
            out["speculation"].append({
                "run": f.stem, "label": r.get("label"), "tokens": r.get("tokens"),
                "plain_tok_s": r.get("plain_tokens_per_second"),
                "speculative_tok_s": r.get("speculative_tokens_per_second"),
                "speedup": r.get("speedup")})
            continue
        if not isinstance(r, dict) or "decode_tok_s" not in r:
            err = f.with_suffix(".err")
            lines = [l for l in err.read_text(errors="replace").splitlines() if l.strip()] if err.exists() else []
            why = lines[-1][:200] if lines else "no output"
            out["benches"].append({"run": f.stem, "error": f"no report: {why}"})
            continue
        row = {k: r.get(k) for k in (
            "model", "weights", "sampling", "prompt_tokens", "new_tokens", "ttft_ms",
            "decode_tok_s", "median_ms_per_token", "p99_ms_per_token", "achieved_gb_s",
            "copy_gb_s", "percent_of_copy")}
        row["run"] = f.stem
        prof = r.get("profile") or {}
        kernels = prof.get("kernels") or []
        row["kernels_per_token"] = sum(k.get("launches", 0) for k in kernels) or None
        # Launches made with programmatic dependent launch (0: PDL off or unavailable).
        row["pdl_launches"] = sum(k.get("programmatic", 0) for k in kernels) if kernels else None
        row["graph_nodes"] = prof.get("graph_nodes")
        total = sum(k.get("micros", 0.0) for k in kernels)
        if total > 0:
            row["profile"] = sorted(
                ({"kernel": k["name"], "launches": k["launches"], "us": round(k["micros"], 1),
                  "share": round(100 * k["micros"] / total, 1)} for k in kernels),
                key=lambda k: -k["us"])
        out["benches"].append(row)
    for f in sorted(logs.glob("bench-*.txt")):
        out["kernels"] += [dict(r, log=f.name) for r in criterion(f)]

    print(f"# GPU check: {out.get('card') or 'unknown card'}\n")
    t = out["tests"]
    if t:
        print(f"GPU tests: {t['passed']} passed, {t['failed']} failed, {t['ignored']} ignored"
              + (f"; failing: {', '.join(t['failing'])}" if t["failing"] else "") + "\n")
    print("| run | sampling | prompt | ttft ms | tok/s | median ms | p99 ms | GB/s | copy GB/s | % copy | kernels | pdl | nodes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    fmt = lambda v, p=2: "" if v is None else (f"{v:.{p}f}" if isinstance(v, float) else str(v))
    for b in out["benches"]:
        if "error" in b:
            print(f"| {b['run']} | {b['error']} ||||||||||||")
            continue
        print(f"| {b['run']} | {b['sampling'] or 'greedy'} | {b['prompt_tokens']} | {fmt(b['ttft_ms'])} "
              f"| {fmt(b['decode_tok_s'], 1)} | {fmt(b['median_ms_per_token'], 3)} | {fmt(b['p99_ms_per_token'], 3)} "
              f"| {fmt(b['achieved_gb_s'], 0)} | {fmt(b['copy_gb_s'], 0)} | {fmt(b['percent_of_copy'], 1)} "
              f"| {fmt(b['kernels_per_token'])} | {fmt(b.get('pdl_launches'))} | {fmt(b['graph_nodes'])} |")
    # The 1B decode with programmatic dependent launch (bench-llama-3.2-1b, where the card
    # and driver allow it) against plain launches (nopdl-llama-3.2-1b).
    runs = {b["run"]: b for b in out["benches"] if "error" not in b}
    on, off = runs.get("bench-llama-3.2-1b"), runs.get("nopdl-llama-3.2-1b")
    if on and off:
        pdl = {"pdl_launches": on.get("pdl_launches"), "on_tok_s": on["decode_tok_s"],
               "off_tok_s": off["decode_tok_s"], "on_median_ms": on["median_ms_per_token"],
               "off_median_ms": off["median_ms_per_token"]}
        if on["decode_tok_s"] and off["decode_tok_s"]:
            pdl["speedup"] = round(on["decode_tok_s"] / off["decode_tok_s"], 4)
        out["pdl"] = pdl
        print(f"\nPDL, 1B BF16 decode: {fmt(on['decode_tok_s'], 1)} tok/s with it "
              f"({fmt(on.get('pdl_launches'))} programmatic launches a token), "
              f"{fmt(off['decode_tok_s'], 1)} tok/s with TACHYON_PDL=0; median "
              f"{fmt(on['median_ms_per_token'], 3)} / {fmt(off['median_ms_per_token'], 3)} ms"
              + (f"; x{pdl['speedup']}" if "speedup" in pdl else ""))
    if out["speculation"]:
        print("\n## Speculation at the recorded acceptance\n\n| run | tokens | plain tok/s | speculative tok/s | speed-up |\n|---|---|---|---|---|")
        for r in out["speculation"]:
            print(f"| {r['run']} | {r['tokens']} | {fmt(r['plain_tok_s'], 1)} | {fmt(r['speculative_tok_s'], 1)} | {fmt(r['speedup'])} |")
    for b in out["benches"]:
        if b.get("profile"):
            print(f"\n## Profile: {b['run']}\n\n| kernel | launches | us/token | share |\n|---|---|---|---|")
            for k in b["profile"]:
                print(f"| {k['kernel']} | {k['launches']} | {k['us']} | {k['share']}% |")
    if out["kernels"]:
        print("\n## Kernel benches\n\n| bench | time (median, unit) | throughput |\n|---|---|---|")
        for k in out["kernels"]:
            print(f"| {k['bench']} | {' '.join(k['time'])} | {' '.join(k.get('thrpt', []))} |")
    print("\n## JSON\n\n```json")
    print(json.dumps(out, indent=1))
    print("```")


if __name__ == "__main__":
    main()
