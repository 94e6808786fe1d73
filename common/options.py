"""One look-up for named options (presets and the like): aliases, and a "did you mean" hint.

Preset names use hyphens (`modified-1`, `paper-branch-conv3`); the older underscore spellings
(`modified_1`) are accepted as aliases everywhere a preset is named: on the command line and in
`build_model`. The preset tables themselves stay data (`PKG.PRESETS`); this module only maps a
name given by a user onto one of their keys.
"""

from __future__ import annotations

import difflib


def canonical_name(name):
    """The hyphenated spelling of an option name: `modified_1` -> `modified-1`."""
    return str(name).strip().replace("_", "-")


def option_names(options):
    """The hyphenated names of a mapping's keys, sorted (what `--help` and errors list)."""
    return sorted({canonical_name(key) for key in options})


def look_up_option(name, options, *, what="preset"):
    """The key of `options` that `name` means, accepting hyphens and underscores alike.

    Args:
        name: what the user wrote, e.g. "modified-1" or "modified_1".
        options: a mapping (or any collection) of valid keys, e.g. `PKG.PRESETS`.
        what: the kind of option, for the error message.

    Returns:
        The key as it is spelled in `options`.

    Raises:
        ValueError: an unknown name, in Keras' form with the available names and, when one is
            close, a "did you mean" hint: `Unknown preset 'papr'. Available: ['demo', 'paper']
            (did you mean 'paper'?)`.
    """
    if name in options:
        return name
    wanted = canonical_name(name)
    for key in options:
        if canonical_name(key) == wanted:
            return key
    available = option_names(options)
    close = difflib.get_close_matches(wanted, available, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ValueError(f"Unknown {what} '{name}'. Available: {available}{hint}")


#: `inspect --verify` decodes every image by default below this many image files (CONTRACT.md);
#: here, in a module without heavy imports, so that both the CLI and `common.verify` read it.
VERIFY_DEFAULT_LIMIT = 5000
