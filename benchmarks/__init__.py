"""Speed, memory and robustness benchmarks for imgsim (issues 5 and 6); see benchmarks/README.md.

python -m benchmarks.run --data-dir ../shared/data    # make bench: writes benchmarks/RESULTS.md
python -m benchmarks.soak                             # make soak: 20,000 mixed requests
"""
