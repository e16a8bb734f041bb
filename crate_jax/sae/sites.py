"""Which SAEs a config asks for, and each one's settings.

`sae.sites` lists the SAEs to fit: an entry `mlp` fits one on the `mlp` site under the name
`mlp`; `NAME=SITE` fits one on SITE under NAME, so one site can carry several SAEs (the study's
`mlp,mlp_wide=mlp`: an SAE as wide as CRATE's ISTA code and one four times wider). Each SAE's
latents become the neuron site `sae_<NAME>`, its files live in `sae/<NAME>/`. Every SAE takes
the `sae` section's settings, except those its entry in `sae.per_site` (`{NAME: {key: value}}`)
gives it.
"""

from __future__ import annotations

from crate_jax.model import NEURON_SITES, ConfigError

SAE_SITE_PREFIX = "sae_"
# The settings one SAE may set for itself in `sae.per_site`: what it is, not how it is trained.
PER_SITE_KEYS = ("kind", "expansion", "k", "l1_coefficient", "aux_k")


def sae_site(name: str) -> str:
    """The neuron site of the latents of the SAEs named `name` (`mlp` -> `sae_mlp`)."""
    return f"{SAE_SITE_PREFIX}{name}"


def sae_name(site: str) -> str | None:
    """The SAEs a neuron site reads (`sae_mlp` -> `mlp`); None for a model's own site."""
    return site.removeprefix(SAE_SITE_PREFIX) if site.startswith(SAE_SITE_PREFIX) else None


def configured_saes(config) -> dict[str, str]:
    """`{name: the site it reads}` of `sae.sites` (none in a config older than the sae stage)."""
    sae = config.get("sae") if hasattr(config, "get") else None
    return parse_sae_sites(sae.sites) if sae else {}


def parse_sae_sites(text: str) -> dict[str, str]:
    """`{name: site}` of a `sae.sites` value (`mlp,mlp_wide=mlp`)."""
    saes: dict[str, str] = {}
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        name, _, base = (part.strip() for part in entry.partition("="))
        base = base or name
        if not name.isidentifier() or not base.isidentifier():
            raise ConfigError(f"sae.sites entry {entry!r} is neither a site nor NAME=SITE "
                              "(e.g. mlp_wide=mlp)")
        if name in saes:
            raise ConfigError(f"sae.sites names {name!r} twice; give the second SAE a name "
                              f"of its own, e.g. {name}_wide={base}")
        saes[name] = base
    return saes


def site_overrides(config, name: str) -> dict:
    """The settings `sae.per_site.<name>` gives SAE `name` (checked: only PER_SITE_KEYS)."""
    per_site = config.sae.get("per_site") or {}
    overrides = dict(per_site.get(name) or {})
    unknown = sorted(set(overrides) - set(PER_SITE_KEYS))
    if unknown:
        raise ConfigError(f"sae.per_site.{name} sets {', '.join(unknown)}; an SAE may set only "
                          f"{', '.join(PER_SITE_KEYS)} for itself")
    return overrides


def check_per_site_names(config) -> None:
    """`sae.per_site` may name only SAEs of `sae.sites`: a typo there would go unused."""
    stray = sorted(set(config.sae.get("per_site") or {}) - set(configured_saes(config)))
    if stray:
        raise ConfigError(f"sae.per_site names {', '.join(stray)}, which sae.sites does not "
                          f"fit ({config.sae.sites!r})")


def ordered_sites(sites) -> list[str]:
    """`sites` as reports list them: the model's own in `NEURON_SITES` order, then SAE sites
    (by name)."""
    sites = set(sites)
    return ([site for site in NEURON_SITES if site in sites]
            + sorted(site for site in sites if site not in NEURON_SITES))
