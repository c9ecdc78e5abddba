#!/usr/bin/env python3
"""Error analysis of an ImageFolder data set through the served model (what is measured is what is served).

    python scripts/analyze_errors.py [--data-dir DIR] [--output-dir DIR] [--visualize] [--gradcam]
        [--method gradcam] [--faithfulness] [--top-k N] [--url URL ...] [--model NAME]
        [--token-file key_file.json ...] [--masks-dir DIR] [--lesion-masks DIR] [--resume]
        [--tabular CSV [--tabular-root DIR]]

Every file under DATA_DIR/CLASS/ is decoded locally exactly as the server decodes it (corrupt and
non-image files are reported, not sent), then sent to TorchServe from a thread pool so the server can
batch. The walk never follows a link out of the folder or back into it (skipped links are listed in
failures.csv). Results are appended to OUTPUT_DIR/predictions.jsonl as they arrive: Ctrl-C or a crash
loses nothing and --resume skips what is done. 503, 507 (worker died), timeouts and connection errors
are retried with backoff, moving to the next server, so a worker crash costs no image.

The requests ask only for what is used: never an image (images=none), and no map (explain=none)
unless a mask (focus score), a lesion mask (pointing game) or --faithfulness needs the predicted
class's map. With --gradcam the maps of the predicted and of the true class of each of the top-k most
confident errors come from one request each (target=PRED,TRUE) and are drawn here.

Multimodal models (image + clinical fields) get each image's fields from --tabular CSV (see
camserve/clinical_table.py for the format and the lookup rule); --tabular-root names the folder the
CSV's paths are relative to (default: --data-dir). An image without a row is sent with every field
missing, never skipped. For the thyroid demo: --model thyroid_phantom --data-dir data/thyroid/test
--tabular data/thyroid/clinical.csv --tabular-root data/thyroid.

Exit status: 0 all images analysed, 1 some failed (see failures.csv), 2 bad setup (flags, server,
token, CSV, resume), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python scripts/analyze_errors.py` without installing the package
    sys.path.insert(0, str(REPO))

from camserve import cli  # noqa: E402
from camserve.analysis import figures, gallery, report_html  # noqa: E402
from camserve.analysis.dataset import Failure, Item, Scan, safe_stems, scan  # noqa: E402
from camserve.analysis.localisation import DEFAULT_DILATE_PX  # noqa: E402
from camserve.analysis.provenance import provenance  # noqa: E402
from camserve.analysis.records import Record, RecordLog  # noqa: E402
from camserve.analysis.remote import Remote, Servers, Settings  # noqa: E402
from camserve.analysis.report import analyse, write_json, write_tables  # noqa: E402
from camserve.analysis.results import Analysis, collect  # noqa: E402
from camserve.analysis.runner import run_pool  # noqa: E402
from camserve.client import read_token  # noqa: E402
from camserve.clinical_table import ClinicalTable, read_table  # noqa: E402
from camserve.errors import CamserveError, DataError, excerpt  # noqa: E402
from camserve.schema import CAM_METHODS, COLORMAPS, DEFAULT_ALPHA, Explanation, ModelInfo  # noqa: E402

log = logging.getLogger("analyze_errors")
DEFAULT_DATA = REPO / "data" / "phantoms" / "test"
DEFAULT_MASKS = REPO / "data" / "phantoms" / "masks" / "lungs" / "test"
DEFAULT_LESIONS = REPO / "data" / "phantoms" / "masks" / "lesions" / "test"
DEFAULT_OUT = REPO / "outputs" / "error_analysis"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    cli.add_data_dir(p, DEFAULT_DATA, "ImageFolder tree, one folder per class")
    cli.add_output_dir(p, DEFAULT_OUT, "where the report goes")
    a("--masks-dir", type=Path, metavar="DIR", help="region masks mirroring the data tree, for a focus score per "
      f"image (default: {DEFAULT_MASKS} when --data-dir is the default and it exists)")
    a("--lesion-masks", type=Path, metavar="DIR", help="lesion masks mirroring the data tree: pointing game and "
      f"focus in the lesion (default: {DEFAULT_LESIONS} when --data-dir is the default and it exists)")
    a("--dilate-px", type=cli.non_negative_int, default=DEFAULT_DILATE_PX,
      help="pointing-game tolerance: lesion mask dilation in image pixels (default: %(default)s)")
    a("--visualize", action="store_true", help="draw the figures and thumbnails of the misclassified images")
    a("--gradcam", action="store_true",
      help="request the maps of the predicted and true class of the top-k errors (gradcam_errors/, report cards)")
    a("--method", choices=CAM_METHODS, default="gradcam", help="CAM method of every map (default: %(default)s)")
    a("--faithfulness", action="store_true",
      help="ask for per-request faithfulness (average drop, increase in confidence, deletion drop)")
    a("--top-k", type=cli.positive_int, default=20, help="errors to explain, list and show (default: %(default)s)")
    cli.add(p, "--url", "--server-url", action="append", metavar="URL",
            help=f"TorchServe inference API; repeat to share the work between servers (default: {cli.DEFAULT_URL})")
    a("--model", default="chest_phantom", help="served model name (default: %(default)s)")
    a("--token", action="append", help="inference token (one, or one per --url); overrides --token-file")
    cli.add(p, "--token-file", "--key-file", type=Path, action="append", metavar="FILE",
            help=f"TorchServe's key file (one, or one per --url; default: {cli.DEFAULT_TOKEN_FILE})")
    a("--timeout", type=cli.seconds, default=60.0, metavar="SECONDS", help="seconds per request (default: %(default)s)")
    a("--batch-size", type=cli.positive_int, default=8,
      help="images in flight per server; match the model's TorchServe batchSize (default: %(default)s)")
    a("--concurrency", type=cli.positive_int, help="requests in flight in total (default: batch size x servers)")
    a("--retries", type=cli.non_negative_int, default=5,
      help="retries on 503, 507 (worker died), connection errors and timeouts (default: %(default)s)")
    a("--backoff", type=cli.positive_float, default=0.5,
      help="first retry delay in seconds, doubled at each retry, at most 30 (default: %(default)s)")
    a("--colormap", choices=COLORMAPS, default="jet", help="heatmap colormap (default: %(default)s)")
    a("--alpha", type=cli.unit_float, default=DEFAULT_ALPHA, help="heatmap weight in overlays (default: %(default)s)")
    a("--resume", action="store_true", help="continue an interrupted run from OUTPUT_DIR/predictions.jsonl")
    a("--tabular", type=Path, metavar="CSV",
      help="clinical fields of a multimodal model: a 'path' column plus one column per field, empty = missing")
    a("--tabular-root", type=Path, metavar="DIR", help="folder the CSV's paths are relative to (default: --data-dir)")
    return p


def make_servers(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Servers:
    urls = args.url or [cli.DEFAULT_URL]
    tokens = args.token or [read_token(f) for f in (args.token_file or [cli.DEFAULT_TOKEN_FILE])]
    if len(tokens) not in (1, len(urls)):
        parser.error(f"give one token (file) or one per --url: {len(tokens)} for {len(urls)} URLs")
    return Servers(urls, tokens * len(urls) if len(tokens) == 1 else tokens, args.timeout)


def settings(args: argparse.Namespace) -> Settings:
    return Settings(args.model, args.method, args.masks_dir is not None, args.lesion_masks is not None,
                    args.faithfulness, args.dilate_px, args.retries, args.backoff)


def concurrency(args: argparse.Namespace, remote: Remote) -> int:
    return int(args.concurrency or args.batch_size * len(remote.servers.urls))


def unexpected(exc: BaseException) -> str:
    """The recorded reason of an error no code path expected (a bug): its type and a bounded excerpt."""
    return f"{type(exc).__name__}: {excerpt(str(exc), 200)}"


def run_predictions(todo: list[Item], remote: Remote, args: argparse.Namespace, classes: list[str],
                    records: RecordLog) -> None:
    with tqdm(total=len(todo), unit="img", desc="analyze", dynamic_ncols=True) as bar:
        def sink(rec: Record) -> None:
            records.write(rec)
            bar.update(1)
        run_pool(todo, lambda it: remote.predict(it, classes),
                 lambda it, exc: Record.failed(it.rel, it.label, "request", unexpected(exc)),
                 sink, concurrency(args, remote))


def request_maps(an: Analysis, scanned: Scan, remote: Remote, args: argparse.Namespace
                 ) -> tuple[dict[str, list[Explanation]], list[Failure]]:
    """The predicted- and true-class maps of the top-k errors, one request each."""
    paths = {it.rel: it.path for it in scanned.items}
    maps: dict[str, list[Explanation]] = {}
    failures: list[Failure] = []

    def work(i: int) -> tuple[int, list[Explanation] | Exception]:
        rel = an.rels[i]
        try:
            return i, remote.error_maps(paths[rel], rel, int(an.y_true[i]), int(an.y_pred[i]))
        except CamserveError as exc:
            return i, exc

    def sink(result: tuple[int, list[Explanation] | Exception]) -> None:
        i, value = result
        if isinstance(value, CamserveError):
            failures.append(Failure(an.rels[i], "gradcam", remote.failure_reason(value)))
        elif isinstance(value, Exception):
            failures.append(Failure(an.rels[i], "gradcam", unexpected(value)))
        else:
            maps[an.rels[i]] = value

    run_pool(an.errors_by_confidence()[:args.top_k], work, lambda i, exc: (i, exc), sink, concurrency(args, remote))
    return maps, failures


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
    lines += ["", *summary["headline"], f"\nReport: {out / 'report.html'}"]
    print("\n".join(lines))


def write_report(an: Analysis, scanned: Scan, info: ModelInfo, remote: Remote, args: argparse.Namespace,
                 argv: list[str]) -> int:
    """Everything after the predictions; returns the number of failures (images and maps)."""
    out, table = args.output_dir, remote.table
    for owned in ("figures", "gradcam_errors"):  # regenerated below: no stale files from earlier runs
        shutil.rmtree(out / owned, ignore_errors=True)
    model = {"name": info.name, "version": info.version, "arch": info.arch, "classes": info.classes}
    summary, confusion = analyse(an, model, args.top_k, args.method, args.dilate_px)
    maps, map_failures = request_maps(an, scanned, remote, args) if args.gradcam else ({}, [])
    if args.gradcam:
        summary["gradcam_failed"] = len(map_failures)
    if table is not None:
        summary["clinical_fields"] = {"csv": str(table.source), **(summary["clinical_fields"] or {}),
                                      "csv_rows_outside_data_dir": table.outside}
    items = {it.rel: it for it in scanned.items}
    clinical = {rel: table.lookup(rel) or {} for rel in an.rels} if table is not None else None
    style = gallery.Style(args.method, args.colormap, args.alpha, args.visualize, args.top_k, bool(info.tabular),
                          args.gradcam)
    cards, files = gallery.error_gallery(an, items, out, safe_stems(an.rels), maps, style, clinical)
    figs = figures.write_figures(out / "figures", an) if args.visualize and an.n else {}
    failures = an.failures + sorted(map_failures, key=lambda f: f.rel)
    write_tables(out, replace(an, failures=failures), summary, confusion, files)
    prov = provenance(
        model={**model, "layer": info.layer, "input_size": info.input_size}, method=args.method, argv=argv,
        urls=remote.servers.urls, folders={"data_dir": args.data_dir, "masks_dir": args.masks_dir,
                                           "lesion_masks_dir": args.lesion_masks},
        images={"files": len(scanned.items) + len(scanned.failures), "analysed": an.n, "failed": len(an.failures)},
        file_list_sha256=scanned.file_list_sha256,
        tabular={"csv": str(table.source.resolve()), "sha256": table.sha256} if table is not None else None)
    write_json(out / "provenance.json", prov)
    html = report_html.render(summary, confusion, figs, cards, [(f.rel, f.stage, f.reason) for f in failures], prov,
                              gallery.browse_thumbs(an, items))
    (out / "report.html").write_text(html, encoding="utf-8")
    print_summary(summary, out)
    return len(failures)


def clinical_table(args: argparse.Namespace, info: ModelInfo, scanned: Scan) -> ClinicalTable | None:
    """The ``--tabular`` CSV checked against the served model's clinical fields (``DataError`` if unusable)."""
    names = [f["name"] for f in (info.tabular or {}).get("features", [])]
    if args.tabular is None:
        if names:
            log.warning("%s takes clinical fields (%s) but no --tabular CSV was given: every image is sent "
                        "with them missing", info.name, ", ".join(names))
        return None
    if not names:
        raise DataError(f"--tabular: model {info.name!r} takes no clinical fields (it is image-only)")
    table = read_table(args.tabular, names).rebase(args.tabular_root or args.data_dir, args.data_dir)
    absent = [n for n in names if n not in table.columns]
    if absent:
        log.warning("%s has no column for %s: sent as missing for every image", args.tabular, ", ".join(absent))
    rowless = [it.rel for it in scanned.items if table.lookup(it.rel) is None]
    ambiguous = [rel for rel in rowless if len(table.candidates(rel)) > 1]
    if rowless:
        log.warning("%d of %d images have no row in %s (e.g. %s): sent with every clinical field missing",
                    len(rowless), len(scanned.items), args.tabular, rowless[0])
    if ambiguous:
        log.warning("%d of them match several rows (e.g. %s): give --tabular-root so paths are exact",
                    len(ambiguous), ambiguous[0])
    if table.outside:
        log.info("%d rows of %s are for images outside %s: ignored", table.outside, args.tabular, args.data_dir)
    return table


def apply_defaults(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.data_dir == DEFAULT_DATA:
        if args.masks_dir is None and DEFAULT_MASKS.is_dir():
            args.masks_dir = DEFAULT_MASKS
        if args.lesion_masks is None and DEFAULT_LESIONS.is_dir():
            args.lesion_masks = DEFAULT_LESIONS
    if not args.data_dir.is_dir():
        parser.error(f"--data-dir {args.data_dir} is not a directory")
    if args.tabular_root is not None and args.tabular is None:
        parser.error("--tabular-root needs --tabular CSV")


def run_meta(args: argparse.Namespace, info: ModelInfo, table: ClinicalTable | None) -> dict[str, Any]:
    """What the recorded results depend on: a resumed run must match it."""
    def where(path: Path | None) -> str | None:
        return str(path.resolve()) if path else None
    meta: dict[str, Any] = {"model": info.name, "version": info.version, "classes": info.classes,
                            "data_dir": where(args.data_dir), "masks_dir": where(args.masks_dir)}
    if args.lesion_masks is not None:
        meta.update(lesion_masks_dir=where(args.lesion_masks), dilate_px=args.dilate_px)
    if args.lesion_masks is not None or args.masks_dir is not None or args.faithfulness:
        meta.update(method=args.method, faithfulness=args.faithfulness)
    if table is not None:
        meta["tabular"] = {"csv": where(table.source), "sha256": table.sha256,
                           "root": where(args.tabular_root or args.data_dir)}
    return meta


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_defaults(args, parser)
    try:
        remote = Remote(make_servers(args, parser), settings(args))
        info = remote.describe()
        scanned = scan(args.data_dir, info.classes, args.masks_dir, args.lesion_masks)
        for folder in scanned.unknown_folders:
            log.warning("folder %r is not a class of %s (%s): its files are listed in failures.csv",
                        folder, args.model, ", ".join(info.classes))
        remote.table = clinical_table(args, info, scanned)
        records = RecordLog(args.output_dir / "predictions.jsonl", run_meta(args, info, remote.table), args.resume)
    except CamserveError as exc:
        print(f"analyze_errors: {exc.message}", file=sys.stderr)
        return 2
    with records:
        done = records.done()
        todo = [it for it in scanned.items if it.rel not in done]
        if args.resume:
            log.info("resuming: %d of %d images already analysed", len(scanned.items) - len(todo), len(scanned.items))
        try:
            run_predictions(todo, remote, args, list(info.classes), records)
        except KeyboardInterrupt:
            print(f"\ninterrupted: results so far are in {records.path}; rerun with --resume to continue",
                  file=sys.stderr)
            return 130
        latest = records.latest()
    try:
        failed = write_report(collect(info.classes, scanned, latest), scanned, info, remote, args,
                              sys.argv if argv is None else ["analyze_errors.py", *argv])
    except KeyboardInterrupt:
        print("\ninterrupted while writing the report; rerun with --resume", file=sys.stderr)
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
