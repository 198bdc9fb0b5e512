"""moi-demo: standard vs Mixture of Inputs, side by side. `python app.py [--model M]`; also a HF Space."""

from moi_demo.app.layout import build_demo
from moi_demo.app.main import launch, parse_args, start_engine

if __name__ == "__main__":
    args = parse_args()
    demo = build_demo(start_engine(args), max_new_tokens=args.max_new_tokens)
    launch(demo, args)
