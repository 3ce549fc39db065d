"""Reads logs/*.log (written by run_all.sh) and prints the Markdown table of README.md: final train / ID / OOD
accuracy, OOD accuracy on the still-object pair, and the best last-layer refit where one was run."""
import ast
import re
from pathlib import Path

here = Path(__file__).parent
print("| run | train | ID | OOD | still pair, OOD | last-layer refit, best OOD (weights) |")
print("|---|---:|---:|---:|---:|---|")
for name in [line.split()[0] for line in (here / "runs.txt").read_text().splitlines() if line.strip()]:
    text = (here / "logs" / f"{name}.log").read_text()
    classes = ast.literal_eval(re.search(r"^classes (\[.*?\])", text, re.M).group(1))
    train, id_acc, ood = re.search(r"final: train ([\d.]+) id ([\d.]+) ood ([\d.]+)", text).groups()
    rows = [[int(v) for v in re.split(r"[,\s]+", r.strip()) if v] for r in
            re.findall(r"\[([\d,\s]+)\]", text.split("OOD confusion")[1].split("final")[0])]
    pair = [classes.index("fry egg"), classes.index("boil egg")]
    still = sum(rows[c][c] for c in pair) / sum(sum(rows[c]) for c in pair)
    probes = re.findall(r"probe (.+?) C=[\d.]+: id [\d.]+ ood ([\d.]+)", text)
    best = max(probes, key=lambda p: float(p[1]), default=None)
    refit = f"{best[1]} ({best[0]})" if best else ""
    print(f"| {name} | {train} | {id_acc} | {ood} | {still:.3f} | {refit} |")
