"""emif-daemon: prompts files → txt2img → img2img upscale → Segment Anything cut-outs."""

__version__ = "0.1.0"
