"""Training speed of the BagNet under each oneDNN setting, at the demo's and the paper's settings.

    python benches/bench_onednn.py                  # median of 3, interleaved
    python benches/bench_onednn.py --repeats 5 --settings demo

Variants: oneDNN fully on (TF_ENABLE_ONEDNN_OPTS=1), the package's default for this CPU (neither
variable set: `import needles_tf` chooses), oneDNN capped at AVX2
(ONEDNN_MAX_CPU_ISA=AVX2) and oneDNN's TensorFlow ops off (TF_ENABLE_ONEDNN_OPTS=0). Each
measurement is one `benches/bench_model.py` process (the variables are read when TensorFlow
starts); the variants take turns, so drifting machine load hits them alike. A variant that
crashes is reported with its signal. Prints a Markdown table: median images/s and the ratio to
oneDNN on, and the default the package picks on this CPU.
"""

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys

from needles_tf.runtime import ONEDNN_VARIABLES, configure_onednn, cpu_flags

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = {
    "oneDNN on": {"TF_ENABLE_ONEDNN_OPTS": "1"},
    "package default": {},  # whatever `import needles_tf` picks on this CPU
    "ONEDNN_MAX_CPU_ISA=AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "TF_ENABLE_ONEDNN_OPTS=0": {"TF_ENABLE_ONEDNN_OPTS": "0"},
}
# Both at 64 x 64, RF 33, batch 32: the demo's model (s = 1/8, no normalisation) and the
# paper's (s = 1, instance normalisation).
SETTINGS = {
    "demo": ["--scale", "0.125", "--no_norm", "--steps", "30"],
    "paper": ["--scale", "1", "--steps", "6"],
}
COMMON = ["--canvas", "64", "--rf", "33", "--batch", "32"]


def measure(setting: str, variant: str) -> float | str:
    """images/s of one bench_model.py process, or 'crash (SIGSEGV)' and the like."""
    env = {k: v for k, v in os.environ.items() if k not in ONEDNN_VARIABLES}
    env.update(VARIANTS[variant], TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, os.path.join(HERE, "bench_model.py"), *COMMON,
                             *SETTINGS[setting]], env=env, capture_output=True, text=True,
                            check=False)
    if result.returncode < 0:
        return f"crash ({signal.Signals(-result.returncode).name})"
    found = re.search(r"([\d.]+) images/s", result.stdout)
    if result.returncode or not found:
        return f"failed (exit {result.returncode})"
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", default="demo,paper", help="comma-separated: demo, paper")
    args = parser.parse_args()
    settings = args.settings.split(",")
    results = {(s, v): [] for s in settings for v in VARIANTS}
    for repeat in range(args.repeats):
        for setting in settings:
            for variant in VARIANTS:
                results[setting, variant].append(measure(setting, variant))
                print(f"# round {repeat + 1}: {setting:5s} {variant:24s} "
                      f"{results[setting, variant][-1]}", file=sys.stderr, flush=True)
    avx512 = sorted(f for f in cpu_flags() if f.startswith("avx512"))
    print(f"CPU: {os.cpu_count()} cores, AVX-512: {', '.join(avx512) or 'none'}; "
          f"package default here: {configure_onednn({})}\n")
    print(f"| setting | variant | images/s (median of {args.repeats}) | vs oneDNN on |")
    print("|---|---|---|---|")
    for setting in settings:
        base = None
        for variant in VARIANTS:
            runs = results[setting, variant]
            crashes = [r for r in runs if isinstance(r, str)]
            if crashes:
                print(f"| {setting} | {variant} | {crashes[0]} in {len(crashes)}/{len(runs)} | - |")
                continue
            median = statistics.median(runs)
            base = base or (median if variant == "oneDNN on" else None)
            ratio = f"{median / base:.2f}x" if base else "-"
            print(f"| {setting} | {variant} | {median:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
