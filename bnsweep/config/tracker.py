"""The checks of a run's MLflow logger before anything is built: mlflow installed, its store's
URI one MLflow has a store for, and a server that answers now (bnsweep.config.checks calls
them; each failure is one ConfigError line)."""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

from bnsweep.config.values import ConfigError


def check_tracker(cfg: DictConfig) -> None:
    """A logger of MLflow needs mlflow installed (an optional extra), a store URI of a scheme
    MLflow has a store for, and its server, where it logs to one, answering now."""
    loggers = OmegaConf.select(cfg, "logger", default=None) or {}
    uses = [k for k, v in loggers.items() if v is not None and "MLflow" in str(v.get("_target_", ""))]
    if not uses:
        return
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError(f"logger.{uses[0]} logs to MLflow, which is not installed: "
                          'pip install -e ".[mlflow]"') from None  # fmt: skip
    given = loggers[uses[0]].get("tracking_uri")
    uri = str(given or os.environ.get("MLFLOW_TRACKING_URI") or "")
    key = f"logger.{uses[0]}.tracking_uri" if given else "MLFLOW_TRACKING_URI"
    if uri.startswith(("http://", "https://")):
        _check_server(key, uri)
    elif uri.split(":", 1)[0].split("+", 1)[0] not in _MLFLOW_SCHEMES and ":" in uri:
        _check_scheme(key, uri)


# the store URIs MLflow itself takes (a path, file:, a database, Databricks); another scheme
# is a plugin's, or a mistake
_MLFLOW_SCHEMES = ("file", "sqlite", "postgresql", "mysql", "mssql", "databricks",
                   "databricks-uc", "uc")  # fmt: skip


def _check_scheme(key: str, uri: str) -> None:
    """A store URI of a scheme MLflow knows no store for (``ftp://…``): its client refuses it
    at once (a plugin's scheme constructs), which would otherwise surface as a long traceback
    once the run has made its folder."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient(tracking_uri=uri)
    except MlflowException:
        scheme = uri.split(":", 1)[0]
        raise ConfigError(f"{key}={uri}: MLflow has no store for the scheme {scheme!r}; use a "
                          "local path, file:, sqlite:///…, or an http(s):// server") from None  # fmt: skip


def _check_server(key: str, uri: str) -> None:
    """An MLflow server that does not answer in 5 s is refused (its client would retry for
    minutes: the run would wait, in effect hung)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).close()
    except urllib.error.HTTPError:
        pass  # it answered
    except OSError as e:  # URLError, a refused connection, a timeout
        raise ConfigError(f"{key}={uri}: the MLflow server does not answer "
                          f"({getattr(e, 'reason', e)}); start it, or log to a local store "
                          "(leave the URI unset)") from None  # fmt: skip
