"""Log formats: LOG_FORMAT=json (one JSON object per line) or text.

Request lines (routing.front.request_log) reach the handler in batches: one log
record carries the fields of every request finished since the last write
(`record.requests`), and these formatters turn it into one line per request.
A record per request would cost about 25 µs of CPU each (record, caller
lookup, handler lock, a write per line), a few percent of a request's own
cost; a batch costs one of those per write.
"""

import logging
import re
import time

import orjson

_second = [-1, "", ""]  # the last second formatted: [epoch second, ISO (UTC), text (local)]


def _stamps(ts: float) -> tuple[str, str]:
    """(ISO 8601 UTC, logging's asctime) for `ts`, formatting each second once."""
    second = int(ts)
    if second != _second[0]:
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)),
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))]
    ms = int((ts - second) * 1000)
    return f"{_second[1]}.{ms:03d}Z", f"{_second[2]},{ms:03d}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        requests = getattr(record, "requests", None)
        if requests is not None:
            head = {"level": record.levelname, "logger": record.name, "pid": record.process, "message": "request"}
            return "\n".join(orjson.dumps({"ts": _stamps(fields.pop("ts"))[0], **head, **fields},
                                          default=str).decode() for fields in requests)
        line = {"ts": _stamps(record.created)[0], "level": record.levelname, "logger": record.name,
                "pid": record.process, "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        requests = getattr(record, "requests", None)
        if requests is None:
            return super().format(record)
        head = f" {record.levelname} {record.name} request "
        return "\n".join(_stamps(fields.pop("ts"))[1] + head + " ".join(
            [f"{k}={_text(v) if v.__class__ is str or v is None else v}" for k, v in fields.items()])
            for fields in requests)


_QUOTE = re.compile(r'[\s"=]')


def _text(value: str | None) -> str:
    if value is None:
        return "-"
    return orjson.dumps(value).decode() if not value or _QUOTE.search(value) else value
