"""Run configuration: one TOML file, typed and validated.

A run is described by one TOML file whose tables map onto small frozen dataclasses
(`RunSection` for ``[run]``, `ModelSection` for ``[model]``, ...), gathered in `RunConfig`.
Every table and every key is optional; a missing one takes the default shown by
``dump_toml(RunConfig(), comments=True)`` and in ``examples/run.toml``.

Validation is strict so that a typo never silently falls back to a default: unknown tables
and keys are errors, types are checked (a boolean is not an integer; an integer is accepted
where a float is expected), and every `ConfigError` names the dotted key, the bad value and
what was expected::

    data.partition: expected one of 'iid', 'dirichlet', got 'random'

One idea a module: `fields` (the field engine any config dataclass is built on), `tables`
(TOML tables and dotted overrides into config objects), `schema` (the run's tables),
`toml` (files in, text out).  Only the standard library is imported: the CLI reads configs
before any heavy import.
"""

from splitfed.config.fields import ConfigError
from splitfed.config.schema import (
    HASH_EXCLUDED,
    AggregationSection,
    DataSection,
    LoraPart,
    LoraSection,
    LoraSpec,
    ModelSection,
    PrivacySection,
    RunConfig,
    RunSection,
    ServerSection,
    SplitLoraConfig,
    TrainingSection,
    TransportSection,
)
from splitfed.config.toml import dump_toml, load_config, parse_config, parse_overrides

__all__ = [
    "AggregationSection",
    "ConfigError",
    "DataSection",
    "HASH_EXCLUDED",
    "LoraPart",
    "LoraSection",
    "LoraSpec",
    "ModelSection",
    "PrivacySection",
    "RunConfig",
    "RunSection",
    "ServerSection",
    "SplitLoraConfig",
    "TrainingSection",
    "TransportSection",
    "dump_toml",
    "load_config",
    "parse_config",
    "parse_overrides",
]
