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

One idea a module: `fields` (the field engine any config dataclass is built on: `Section`,
`opt`, `req`, `sub`, `key_error`, `plain`), `tables` (`parse_table`: TOML tables into config
objects; `override`: dotted overrides of them), `schema` (the run's tables and `RunConfig`),
`lora` ([lora]), `parties` ([server], [client], [transport]), `privacy` ([privacy]), `generate`
([generate]: each client's own sampling, never hashed), `toml` (files in, text out).  Other
packages (``eval``, ``rag``) declare their own config classes with the same engine and import only
its public names.  Only the standard library is imported: the CLI reads configs before any heavy import.
"""

from splitfed.config.fields import ConfigError, Section, key_error, opt, plain, req, sub
from splitfed.config.generate import GenerationSettings
from splitfed.config.lora import LoraPart, LoraSection, LoraSpec, SplitLoraConfig
from splitfed.config.parties import ServerSection, TransportSection
from splitfed.config.privacy import PrivacySection
from splitfed.config.schema import (
    HASH_EXCLUDED,
    AggregationSection,
    DataSection,
    ModelSection,
    RunConfig,
    RunSection,
    TrainingSection,
)
from splitfed.config.tables import override, parse_table
from splitfed.config.toml import dump_toml, load_config, load_toml, parse_config, parse_overrides

__all__ = [
    "AggregationSection",
    "ConfigError",
    "DataSection",
    "GenerationSettings",
    "HASH_EXCLUDED",
    "LoraPart",
    "LoraSection",
    "LoraSpec",
    "ModelSection",
    "PrivacySection",
    "RunConfig",
    "RunSection",
    "Section",
    "ServerSection",
    "SplitLoraConfig",
    "TrainingSection",
    "TransportSection",
    "dump_toml",
    "key_error",
    "load_config",
    "load_toml",
    "opt",
    "override",
    "parse_config",
    "parse_overrides",
    "parse_table",
    "plain",
    "req",
    "sub",
]
