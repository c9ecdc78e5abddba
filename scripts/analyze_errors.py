#!/usr/bin/env python3
"""Error analysis of an ImageFolder data set through the served model (what is measured is what is served).

    python scripts/analyze_errors.py [--data-dir DIR] [--output-dir DIR] [--visualize] [--gradcam]
        [--top-k N] [--url URL ...] [--model NAME] [--token-file key_file.json] [--masks-dir DIR] [--resume]
        [--tabular CSV [--tabular-root DIR]]

Every file under DATA_DIR/CLASS/ is decoded locally exactly as the server decodes it (corrupt and
non-image files are reported, not sent), then sent to TorchServe from a thread pool so the server can
batch. Results are appended to OUTPUT_DIR/predictions.jsonl as they arrive: Ctrl-C or a crash loses
nothing and --resume skips what is done. Prediction requests ask for no heatmap (explain=none) unless
a mask is given (the focus score needs the map); with --gradcam the heatmaps of the top-k most
confident errors are requested afterwards, so the cost of rendering and shipping two PNGs per image is
paid only for the images shown.

Multimodal models (image + clinical fields) get each image's fields from --tabular CSV: a `path`
column (the image's path relative to --data-dir, or to --tabular-root) and one column per clinical
field of the model, an empty cell being a missing value (see camserve/analysis/clinical.py). An image
without a row is sent with every field missing, never skipped; the heatmap requests send the same
fields. For the thyroid demo: --model thyroid_phantom --data-dir data/thyroid/test
--tabular data/thyroid/clinical.csv --tabular-root data/thyroid. Exit status: 0 all images analysed, 1 some failed (see
failures.csv), 2 bad setup (server, token, resume), 130 interrupted.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import logging
import shutil
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python scripts/analyze_errors.py` without installing the package
    sys.path.insert(0, str(REPO))

from camserve.analysis import figures, report_html  # noqa: E402
from camserve.analysis.clinical import ClinicalError, ClinicalTable, load_table  # noqa: E402
from camserve.analysis.dataset import Failure, Item, Scan, safe_component, safe_stems, scan  # noqa: E402
from camserve.analysis.records import Record, RecordLog, ResumeMismatch  # noqa: E402
from camserve.analysis.report import Analysis, analyse, collect, write_tables  # noqa: E402
from camserve.analysis.runner import run_pool, with_retries  # noqa: E402
from camserve.client import DEFAULT_URL, Client, read_token  # noqa: E402
from camserve.errors import CamserveError, ServerUnavailable  # noqa: E402
from camserve.imaging import decode_image  # noqa: E402
from camserve.render import from_data_url  # noqa: E402
from camserve.schema import COLORMAPS, DEFAULT_ALPHA, ModelInfo  # noqa: E402
from scripts.cli import non_negative_int, positive_int, unit_float  # noqa: E402

log = logging.getLogger("analyze_errors")
DEFAULT_DATA = REPO / "data" / "phantoms" / "test"
DEFAULT_MASKS = REPO / "data" / "phantoms" / "masks" / "lungs" / "test"
DEFAULT_OUT = REPO / "outputs" / "error_analysis"


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--data-dir", type=Path, default=DEFAULT_DATA,
      help="ImageFolder tree, one folder per class (default: %(default)s)")
    a("--output-dir", type=Path, default=DEFAULT_OUT, help="where the report goes (default: %(default)s)")
    a("--masks-dir", type=Path, help="region masks mirroring the data tree, for a focus score per image "
      f"(default: {DEFAULT_MASKS} when --data-dir is the default and it exists)")
    a("--visualize", action="store_true", help="draw the figures and thumbnails of the misclassified images")
    a("--gradcam", action="store_true", help="request Grad-CAM heatmaps for the top-k errors (gradcam_errors/)")
    a("--top-k", type=positive_int, default=20, help="errors to explain, list and show (default: %(default)s)")
    a("--url", action="append", help=f"TorchServe inference URL; repeat to share the work between servers "
      f"(default: {DEFAULT_URL})")
    a("--model", default="chest_phantom", help="served model name (default: %(default)s)")
    a("--token", action="append", help="inference token (one, or one per --url); overrides --token-file")
    a("--token-file", type=Path, action="append",
      help="TorchServe key_file.json (one, or one per --url; default: key_file.json)")
    a("--batch-size", type=positive_int, default=8,
      help="images in flight per server; match the model's TorchServe batchSize (default: %(default)s)")
    a("--concurrency", type=positive_int, help="requests in flight in total (default: batch size x servers)")
    a("--retries", type=non_negative_int, default=3,
      help="retries on 503, connection errors and timeouts (default: %(default)s)")
    a("--backoff", type=positive_float, default=0.5,
      help="first retry delay in seconds, doubled at each retry (default: %(default)s)")
    a("--timeout", type=positive_float, default=60.0, help="seconds per request (default: %(default)s)")
    a("--colormap", choices=COLORMAPS, default="jet", help="heatmap colormap (default: %(default)s)")
    a("--alpha", type=unit_float, default=DEFAULT_ALPHA, help="heatmap weight in overlays (default: %(default)s)")
    a("--resume", action="store_true", help="continue an interrupted run from OUTPUT_DIR/predictions.jsonl")
    a("--tabular", type=Path, metavar="CSV",
      help="clinical fields of a multimodal model: a 'path' column plus one column per field, empty = missing")
    a("--tabular-root", type=Path, metavar="DIR",
      help="folder the CSV's paths are relative to (default: --data-dir)")
    return p


class Servers:
    """One client per (thread, server). Each thread starts on its own server, round-robin, and a retry
    moves on to the next one, so a slow or dead server does not hold images back."""

    def __init__(self, urls: list[str], tokens: list[str], timeout: float) -> None:
        self.urls, self.tokens, self.timeout = urls, tokens, timeout
        self._slots = itertools.count()
        self._local = threading.local()

    def client(self, attempt: int = 0) -> Client:
        local = self._local
        if not hasattr(local, "slot"):
            local.slot, local.clients = next(self._slots), {}
        k = (local.slot + attempt) % len(self.urls)
        if k not in local.clients:
            local.clients[k] = Client(self.urls[k], self.tokens[k] or None, timeout=self.timeout)
        return local.clients[k]


def make_servers(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Servers:
    urls = args.url or [DEFAULT_URL]
    tokens = args.token or [read_token(f) for f in (args.token_file or [Path("key_file.json")])]
    if len(tokens) not in (1, len(urls)):
        parser.error(f"give one token (file) or one per --url: {len(tokens)} for {len(urls)} URLs")
    return Servers(urls, tokens * len(urls) if len(tokens) == 1 else tokens, args.timeout)


def describe(servers: Servers, args: argparse.Namespace) -> ModelInfo:
    """The served model's metadata; every server must serve the same classes."""
    infos = []
    for k, url in enumerate(servers.urls):
        client = Client(url, servers.tokens[k] or None, timeout=args.timeout)
        infos.append(with_retries(lambda _a, c=client: c.describe(args.model), args.retries, args.backoff))
    for url, info in zip(servers.urls[1:], infos[1:], strict=True):
        if (info.classes, info.version) != (infos[0].classes, infos[0].version):
            raise CamserveError(f"{url} serves {args.model} v{info.version} {info.classes}, but "
                                f"{servers.urls[0]} serves v{infos[0].version} {infos[0].classes}")
    return infos[0]


def clinical_options(table: ClinicalTable | None, rel: str) -> tuple[dict[str, str], str | None]:
    """Request options carrying an image's clinical fields (as one JSON object, so no field name can
    collide with an option), and its record status: "row", "no_row" (all fields missing) or None."""
    if table is None:
        return {}, None
    fields = table.fields(rel)
    if not fields:
        return {}, "row" if fields is not None else "no_row"
    return {"clinical": json.dumps(fields, separators=(",", ":"))}, "row"


def predict(item: Item, servers: Servers, args: argparse.Namespace, classes: list[str],
            table: ClinicalTable | None = None) -> Record:
    """One image's record; every failure becomes a failed record with its reason."""
    clinical, status = clinical_options(table, item.rel)

    def failed(stage: str, reason: str) -> Record:
        return Record.failed(item.rel, item.label, stage, reason, status)
    try:
        data = item.path.read_bytes()
    except OSError as exc:
        return failed("read", f"{type(exc).__name__}: {exc.strerror or exc}")
    try:
        decode_image(data, field=item.rel)  # exactly the server's decoding (EXIF, modes, size limits)
    except CamserveError as exc:
        return failed("decode", exc.message)
    mask, mask_status = load_mask(item, args.masks_dir)
    explain = "gradcam" if mask is not None else "none"
    try:
        resp = with_retries(lambda a: servers.client(a).explain(args.model, data, mask=mask, explain=explain,
                                                                **clinical), args.retries, args.backoff)
    except ServerUnavailable as exc:
        return failed("request", f"ServerUnavailable after {args.retries + 1} attempts: {exc.message}")
    except CamserveError as exc:
        return failed("request", f"{type(exc).__name__} ({exc.status}): {exc.message}")
    if list(resp.model.classes) != classes:
        return failed("request", f"the server's classes changed during the run: {resp.model.classes}")
    focus = resp.explanation.focus_score if resp.explanation else None
    return Record(item.rel, item.label, "ok", resp.prediction.label,
                  [resp.probabilities[c] for c in classes], focus, mask_status, clinical=status)


def load_mask(item: Item, masks_dir: Path | None) -> tuple[bytes | None, str | None]:
    if masks_dir is None:
        return None, None
    if item.mask is None:
        return None, "missing"
    try:
        data = item.mask.read_bytes()
        decode_image(data, field="mask")
    except (OSError, CamserveError) as exc:
        log.warning("mask %s unreadable (%s): no focus score for %s", item.mask, exc, item.rel)
        return None, "unreadable"
    return data, "ok"


def run_predictions(todo: list[Item], servers: Servers, args: argparse.Namespace, classes: list[str],
                    records: RecordLog, table: ClinicalTable | None = None) -> None:
    concurrency = args.concurrency or args.batch_size * len(servers.urls)
    with tqdm(total=len(todo), unit="img", desc="analyze", dynamic_ncols=True) as bar:
        def sink(rec: Record) -> None:
            records.write(rec)
            bar.update(1)
        run_pool(todo, lambda it: predict(it, servers, args, classes, table),
                 lambda it, exc: Record.failed(it.rel, it.label, "request", f"{type(exc).__name__}: {exc}"),
                 sink, concurrency)


def explain_errors(an: Analysis, scanned: Scan, servers: Servers, args: argparse.Namespace, out: Path,
                   stems: dict[str, str], table: ClinicalTable | None = None
                   ) -> tuple[dict[str, str], dict[str, bytes], list[Failure]]:
    """Grad-CAM panels of the top-k errors (explaining the recorded prediction) in gradcam_errors/."""
    paths = {it.rel: it.path for it in scanned.items}
    files: dict[str, str] = {}
    overlays: dict[str, bytes] = {}
    failures: list[Failure] = []

    def work(i: int) -> tuple[int, Any]:
        rel = an.rels[i]
        data = paths[rel].read_bytes()
        resp = with_retries(lambda a: servers.client(a).explain(
            args.model, data, explain="gradcam", target=int(an.y_pred[i]), label=int(an.y_true[i]),
            colormap=args.colormap, alpha=args.alpha, **clinical_options(table, rel)[0]),
            args.retries, args.backoff)
        overlay = from_data_url(resp.explanation.overlay)
        caption = figures.panel_caption(an.classes[an.y_true[i]], an.classes[an.y_pred[i]], an.confidence[i])
        panel = figures.gradcam_panel(decode_image(data), overlay, caption)
        target = out / "gradcam_errors" / safe_component(an.pair(i)) / \
            f"{stems[rel]}_conf{an.confidence[i]:.2f}_gradcam.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        panel.save(target)
        return i, (target.relative_to(out).as_posix(), png(overlay))

    def sink(result: tuple[int, Any]) -> None:
        i, value = result
        if isinstance(value, Exception):
            failures.append(Failure(an.rels[i], "gradcam", f"{type(value).__name__}: {value}"))
        else:
            files[an.rels[i]], overlays[an.rels[i]] = value

    top = an.errors_by_confidence()[:args.top_k]
    run_pool(top, work, lambda i, exc: (i, exc), sink, args.concurrency or args.batch_size * len(servers.urls))
    return files, overlays, failures


def png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def gallery(an: Analysis, scanned: Scan, out: Path, stems: dict[str, str], overlays: dict[str, bytes],
            visualize: bool, top_k: int) -> list[report_html.GalleryItem]:
    """Thumbnails of the errors (all of them in figures/misclassified/ with --visualize); the top-k
    for the report, with their heatmaps when requested."""
    paths = {it.rel: it.path for it in scanned.items}
    items = []
    for rank, i in enumerate(an.errors_by_confidence()):
        if rank >= top_k and not visualize:
            break
        rel, conf = an.rels[i], float(an.confidence[i])
        thumb = figures.thumbnail(decode_image(paths[rel].read_bytes()))
        if visualize:
            target = out / "figures" / "misclassified" / safe_component(an.pair(i)) / f"{stems[rel]}_conf{conf:.2f}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            thumb.save(target)
        if rank < top_k:
            items.append(report_html.GalleryItem(rel, an.classes[an.y_true[i]], an.classes[an.y_pred[i]], conf,
                                                 png(thumb), overlays.get(rel)))
    return items


def print_summary(summary: dict[str, Any], out: Path) -> None:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"
    cal = summary["calibration"]
    lines = [f"Total samples: {summary['total_samples']}",
             f"Total errors: {summary['total_errors']} ({pct(summary['error_rate'])})",
             f"Mean confidence (errors): {pct(summary['mean_confidence_errors'])}",
             f"Mean confidence (correct): {pct(summary['mean_confidence_correct'])}",
             f"Accuracy: {pct(summary['accuracy'])}   balanced: {pct(summary['balanced_accuracy'])}   "
             f"ECE: {cal['ece'] if cal['ece'] is None else round(cal['ece'], 4)} ({cal['n_bins']} bins)",
             f"Failed images: {summary['failed']}" + (f" (see {out / 'failures.csv'})" if summary["failed"] else ""),
             *([f"Clinical fields: from the CSV for {clin['images_with_row']} images; "
                f"{clin['images_without_row']} had no row and were sent with every field missing"]
               if (clin := summary.get("clinical_fields")) else []),
             "", "Top confusion pairs:"]
    lines += [f"  {p['true']}->{p['pred']}: {p['count']}" for p in summary["top_confusion_pairs"][:5]] or ["  (none)"]
    lines.append(f"\nReport: {out / 'report.html'}")
    print("\n".join(lines))


def write_report(an: Analysis, scanned: Scan, info: ModelInfo, servers: Servers, args: argparse.Namespace,
                 table: ClinicalTable | None = None) -> int:
    """Everything after the predictions; returns the number of failures (images and heatmaps)."""
    out = args.output_dir
    for owned in ("figures", "gradcam_errors"):  # regenerated below: no stale files from earlier runs
        shutil.rmtree(out / owned, ignore_errors=True)
    summary, confusion = analyse(an, {"name": info.name, "version": info.version, "arch": info.arch,
                                      "classes": info.classes}, args.top_k)
    stems = safe_stems(an.rels)
    files, overlays, cam_failures = ({}, {}, [])
    if args.gradcam:
        files, overlays, cam_failures = explain_errors(an, scanned, servers, args, out, stems, table)
        summary["gradcam_failed"] = len(cam_failures)
    if table is not None:
        summary["clinical_fields"] = {"csv": str(table.source), **(summary["clinical_fields"] or {}),
                                      "csv_rows_outside_data_dir": table.outside}
    figs = figures.write_figures(out / "figures", an) if args.visualize and an.n else {}
    items = gallery(an, scanned, out, stems, overlays, args.visualize, args.top_k)
    failures = an.failures + sorted(cam_failures, key=lambda f: f.rel)
    write_tables(out, replace(an, failures=failures), summary, confusion, files)
    html = report_html.render(summary, confusion, figs, items, [(f.rel, f.stage, f.reason) for f in failures])
    (out / "report.html").write_text(html, encoding="utf-8")
    print_summary(summary, out)
    return len(failures)


def clinical_table(args: argparse.Namespace, info: ModelInfo, scanned: Scan) -> ClinicalTable | None:
    """The ``--tabular`` CSV checked against the served model's clinical fields (``ClinicalError`` if unusable)."""
    names = [f["name"] for f in (info.tabular or {}).get("features", [])]
    if args.tabular is None:
        if names:
            log.warning("%s takes clinical fields (%s) but no --tabular CSV was given: every image is sent "
                        "with them missing", info.name, ", ".join(names))
        return None
    if not names:
        raise ClinicalError(f"--tabular: model {info.name!r} takes no clinical fields (it is image-only)")
    table = load_table(args.tabular, args.data_dir, names, args.tabular_root)
    absent = [n for n in names if n not in table.columns]
    if absent:
        log.warning("%s has no column for %s: sent as missing for every image", args.tabular, ", ".join(absent))
    rowless = [it.rel for it in scanned.items if table.fields(it.rel) is None]
    if rowless:
        log.warning("%d of %d images have no row in %s (e.g. %s): sent with every clinical field missing",
                    len(rowless), len(scanned.items), args.tabular, rowless[0])
    if table.outside:
        log.info("%d rows of %s are for images outside %s: ignored", table.outside, args.tabular, args.data_dir)
    return table


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.masks_dir is None and args.data_dir == DEFAULT_DATA and DEFAULT_MASKS.is_dir():
        args.masks_dir = DEFAULT_MASKS
    if not args.data_dir.is_dir():
        parser.error(f"--data-dir {args.data_dir} is not a directory")
    if args.tabular_root is not None and args.tabular is None:
        parser.error("--tabular-root needs --tabular CSV")
    try:
        servers = make_servers(args, parser)
        info = describe(servers, args)
        scanned = scan(args.data_dir, info.classes, args.masks_dir)
        for folder in scanned.unknown_folders:
            log.warning("folder %r is not a class of %s (%s): its files are listed in failures.csv",
                        folder, args.model, ", ".join(info.classes))
        table = clinical_table(args, info, scanned)
        meta = {"model": info.name, "version": info.version, "classes": info.classes,
                "data_dir": str(args.data_dir.resolve()),
                "masks_dir": str(args.masks_dir.resolve()) if args.masks_dir else None}
        if table is not None:  # results depend on the CSV: a resumed run must use the same one
            meta["tabular"] = {"csv": str(table.source.resolve()), "sha256": table.sha256,
                               "root": str((args.tabular_root or args.data_dir).resolve())}
        records = RecordLog(args.output_dir / "predictions.jsonl", meta, args.resume)
    except (CamserveError, ResumeMismatch, ClinicalError) as exc:
        print(f"analyze_errors: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    with records:
        done = records.done()
        todo = [it for it in scanned.items if it.rel not in done]
        if args.resume:
            log.info("resuming: %d of %d images already analysed", len(scanned.items) - len(todo), len(scanned.items))
        try:
            run_predictions(todo, servers, args, list(info.classes), records, table)
        except KeyboardInterrupt:
            print(f"\ninterrupted: results so far are in {records.path}; rerun with --resume to continue",
                  file=sys.stderr)
            return 130
        latest = records.latest()
    try:
        failed = write_report(collect(info.classes, scanned, latest), scanned, info, servers, args, table)
    except KeyboardInterrupt:
        print("\ninterrupted while writing the report; rerun with --resume", file=sys.stderr)
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
