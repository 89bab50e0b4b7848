"""TensorBoard event files written with tensorboard's own writer: no torch, no TensorFlow.

One writer for everything bnsweep shows in TensorBoard: a run's scalars, the BN dashboards'
histograms and its HPARAMS session (bnsweep.run.loggers), and a sweep's aggregate curves,
custom-scalars layout and HPARAMS experiment (the report). The protos are the ones
``torch.utils.tensorboard.SummaryWriter`` writes for the same calls (a test reads both back).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


class EventWriter:
    """An event file in ``logdir``: ``add_scalar`` and ``add_histogram`` as SummaryWriter's,
    ``add_custom_scalars`` as its ``add_custom_scalars``, ``add_summary`` for any Summary."""

    def __init__(self, logdir: Path, flush_secs: int = 120) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = Event, Summary
        self.logdir = Path(logdir)
        self._writer = EventFileWriter(str(logdir), flush_secs=flush_secs)

    def add_summary(self, summary: Any, step: int | None = None) -> None:
        event = self._event(wall_time=time.time(), summary=summary)
        if step is not None:
            event.step = step
        self._writer.add_event(event)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        value = self._summary.Value(tag=tag, simple_value=float(value))
        self.add_summary(self._summary(value=[value]), step)

    def add_histogram(self, tag: str, values: Any, step: int) -> None:
        """A histogram of ``values`` (a tensor or an array; no finite value: none written)."""
        proto = histogram_proto(values)
        if proto is not None:
            value = self._summary.Value(tag=tag, histo=proto)
            self.add_summary(self._summary(value=[value]), step)

    def add_custom_scalars(self, layout: dict[str, dict[str, tuple[str, list[str]]]]) -> None:
        self.add_summary(custom_scalars_summary(layout))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def histogram_proto(values: Any, buckets: int = 30) -> Any:
    """The finite values' HistogramProto with ``buckets`` equal-width buckets (TensorBoard
    redraws any bucketing); None when no value is finite. A torch tensor is summarized where
    it lies (a GPU's values are not copied to the host, only the counts)."""
    from tensorboard.compat.proto.summary_pb2 import HistogramProto

    if hasattr(values, "detach"):  # a torch tensor, without importing torch here
        t = values.detach().flatten().double()
        finite = t.isfinite()
        if not bool(finite.all()):
            t = t[finite]
        if t.numel() == 0:
            return None
        lo, hi = (float(v) for v in t.aminmax())
        if hi > lo:  # equal-width buckets, the last one closed, as numpy's
            counts = t.histc(buckets, lo, hi).tolist()
            limits = [lo + (hi - lo) * (i + 1) / buckets for i in range(buckets)]
            limits[-1] = hi
        else:
            counts, limits = [float(t.numel())], [hi]
        return HistogramProto(min=lo, max=hi, num=float(t.numel()), sum=float(t.sum()),
                              sum_squares=float(t.dot(t)), bucket_limit=limits,
                              bucket=counts)  # fmt: skip
    values = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(values)
    if not finite.all():
        values = values[finite]
    if values.size == 0:
        return None
    lo, hi = float(values.min()), float(values.max())
    # equal-width buckets by count and range: numpy's linear pass (edges given as an array
    # make it sort the values: a vectorized job's 27 members' conv maps took 20 s a validation)
    counts, edges = (
        np.histogram(values, bins=buckets, range=(lo, hi))
        if hi > lo
        else (np.histogram(values, bins=np.array([lo, hi])))
    )
    return HistogramProto(min=lo, max=hi, num=float(values.size), sum=float(values.sum()),
                          sum_squares=float(values @ values), bucket_limit=edges[1:].tolist(),
                          bucket=counts.astype(float).tolist())  # fmt: skip


def custom_scalars_summary(layout: dict[str, dict[str, tuple[str, list[str]]]]) -> Any:
    """{category: {chart title: ("Multiline", [tag regexes]) | ("Margin", [value, lower,
    upper])}} as the Summary proto TensorBoard's custom-scalars dashboard reads."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.plugins.custom_scalar import layout_pb2

    categories = []
    for title, charts in layout.items():
        made = []
        for chart_title, (kind, tags) in charts.items():
            if kind == "Margin":
                value, lower, upper = tags
                series = layout_pb2.MarginChartContent.Series(value=value, lower=lower, upper=upper)
                content = layout_pb2.MarginChartContent(series=[series])
                made.append(layout_pb2.Chart(title=chart_title, margin=content))
            else:
                content = layout_pb2.MultilineChartContent(tag=tags)
                made.append(layout_pb2.Chart(title=chart_title, multiline=content))
        categories.append(layout_pb2.Category(title=title, chart=made))
    tensor = TensorProto(
        dtype="DT_STRING",
        string_val=[layout_pb2.Layout(category=categories).SerializeToString()],
        tensor_shape=TensorShapeProto(),
    )
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="custom_scalars"))
    value = Summary.Value(tag="custom_scalars__config__", tensor=tensor, metadata=metadata)
    return Summary(value=[value])


# ---------------------------------------------------------------------------------------------
# HPARAMS: each run writes its session (the values), a sweep writes one experiment (the keys
# with their domains, and the metrics). TensorBoard takes the first experiment it finds as the
# whole experiment, so runs write none.

# the metrics the HPARAMS table shows: the runs' own final scalars (last value of each tag)
HPARAM_METRICS = ("val/acc", "val/acc_best", "test/acc", "test/loss")


def _hparams_summary(tag: str, data: Any) -> Any:
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import metadata

    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))])


def session_summaries(hparams: Mapping[str, Any], start_time: float | None = None) -> list[Any]:
    """A run's HPARAMS session: its start (the values) and its end (status success)."""
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    start = plugin_data_pb2.SessionStartInfo(start_time_secs=start_time or time.time())
    for name, value in hparams.items():
        if isinstance(value, bool):
            start.hparams[name].bool_value = value
        elif isinstance(value, (int, float)):
            start.hparams[name].number_value = value
        else:
            start.hparams[name].string_value = str(value)
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    return [
        _hparams_summary(metadata.SESSION_START_INFO_TAG,
                         plugin_data_pb2.HParamsPluginData(session_start_info=start)),
        _hparams_summary(metadata.SESSION_END_INFO_TAG,
                         plugin_data_pb2.HParamsPluginData(session_end_info=end)),
    ]  # fmt: skip


def experiment_summary(values: Mapping[str, Sequence[Any]], descriptions: Mapping[str, str] = {},
                       metrics: Sequence[str] = HPARAM_METRICS) -> Any:  # fmt: skip
    """A sweep's HPARAMS experiment: every key with its domain over the runs (numbers: an
    interval, else the discrete values) and whether it differs between them, and the metrics."""
    from google.protobuf import struct_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    infos = []
    for name, seen in values.items():
        distinct = list(dict.fromkeys(seen))
        info = api_pb2.HParamInfo(name=name, description=descriptions.get(name, ""),
                                  differs=len(distinct) > 1)  # fmt: skip
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in distinct)
        if numbers and all(math.isfinite(v) for v in distinct):
            info.type = api_pb2.DATA_TYPE_FLOAT64
            info.domain_interval.min_value = float(min(distinct))
            info.domain_interval.max_value = float(max(distinct))
        elif all(isinstance(v, bool) for v in distinct):
            info.type = api_pb2.DATA_TYPE_BOOL
            info.domain_discrete.CopyFrom(struct_pb2.ListValue(values=[
                struct_pb2.Value(bool_value=v) for v in distinct]))  # fmt: skip
        else:
            info.type = api_pb2.DATA_TYPE_STRING
            info.domain_discrete.CopyFrom(struct_pb2.ListValue(values=[
                struct_pb2.Value(string_value=str(v)) for v in distinct]))  # fmt: skip
        infos.append(info)
    metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=t)) for t in metrics]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metric_infos)
    return _hparams_summary(metadata.EXPERIMENT_TAG,
                            plugin_data_pb2.HParamsPluginData(experiment=experiment))  # fmt: skip
