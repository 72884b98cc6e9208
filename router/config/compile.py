"""Validate a raw config document and compile it into the frozen runtime form.

Two passes, all errors collected: first each top-level section is validated on its own
(pydantic: types, names, ISO codes, unknown keys), then the cross-section rules that keep
residency safe run over whatever sections parsed (zones own their countries once, a
cluster stays in its region's zone, rules never send regulated data out of its zone...).
The document is rejected whole if either pass found anything.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

from router.config import iso3166
from router.config.schema import (
    NAMESPACE_RE,
    ClusterTLSConfig,
    FailoverOverride,
    JWTConfig,
    QuotaConfig,
    RouterConfig,
    RuleConfig,
)
from router.config.settings import (
    AuthSettings,
    ClusterTLS,
    CodecSettings,
    HealthSettings,
    JWTSettings,
    QuotaSettings,
    ResolvedConfig,
    ServerTLS,
    TemporalSettings,
)
from router.core.authz import AuthPolicy, Grant
from router.core.authz import Role as AuthRole
from router.core.failover import Mode, Policy
from router.core.model import (
    ClusterSpec,
    DataClass,
    Level,
    Limits,
    Naming,
    Priority,
    RegionSpec,
    Role,
    RoutingTable,
    Rule,
    RuleIndexes,
    TenantSpec,
    ZoneSpec,
)
from router.core.policy import RULE_DEFAULT_REGION, RULE_ZONE_FALLBACK, RULE_ZONE_HOME, names
from router.core.quota import Quota
from router.errors import ConfigError, FieldError

NAMESPACE_PLACEHOLDERS = frozenset({"region", "zone"})
TASK_QUEUE_PLACEHOLDERS = frozenset({"region", "zone", "namespace", "workflow_type"})
BUILTIN_RULES = frozenset({RULE_ZONE_HOME, RULE_ZONE_FALLBACK, RULE_DEFAULT_REGION})

# One adapter per top-level section, keeping the field's constraints (e.g. min_length).
_SECTIONS: dict[str, TypeAdapter[Any]] = {
    name: TypeAdapter(Annotated[field.annotation, field])  # type: ignore[arg-type]
    for name, field in RouterConfig.model_fields.items()
}
_REQUIRED = [name for name, field in RouterConfig.model_fields.items() if field.is_required()]
_MAPPINGS = ("zones", "regions", "tenants")


def format_loc(loc: tuple[str | int, ...]) -> str:
    """('regions', 'eu-west', 'clusters', 1, 'endpoint') -> regions.eu-west.clusters[1].endpoint"""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            out += " (key)"
        else:
            out += f".{part}" if out else str(part)
    return out


def _pydantic_errors(prefix: str, exc: ValidationError) -> list[FieldError]:
    errors = []
    for err in exc.errors(include_url=False):
        path = format_loc((prefix, *err["loc"]))
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = "unknown key"
        elif kind == "missing":
            msg = "required"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        errors.append(FieldError(path, msg))
    return errors


def compile_config(raw: Any, *, source: str = "config") -> ResolvedConfig:
    """Validate ``raw`` (parsed YAML/JSON) and build the resolved config, or raise
    ``ConfigError`` listing every problem with its dotted path."""
    if not isinstance(raw, Mapping):
        raise ConfigError(
            [FieldError("", f"the document must be a mapping, got {type(raw).__name__}")],
            source=source,
        )
    errors: list[FieldError] = []
    for key in raw:
        if key not in _SECTIONS:
            allowed = ", ".join(_SECTIONS)
            errors.append(FieldError(str(key), f"unknown key (allowed: {allowed})"))
    errors += [FieldError(name, "required") for name in _REQUIRED if name not in raw]
    parsed: dict[str, Any] = {}
    known: dict[str, set[str]] = {}
    for name, adapter in _SECTIONS.items():
        if name not in raw:
            continue
        value = raw[name]
        if name in _MAPPINGS and isinstance(value, Mapping) and value:
            # Entry by entry, so one broken region does not hide another's errors.
            known[name] = {str(k) for k in value}
            entries = {}
            for key, entry in value.items():
                try:
                    entries.update(adapter.validate_python({key: entry}))
                except ValidationError as exc:
                    errors += _pydantic_errors(name, exc)
            parsed[name] = entries
            continue
        try:
            parsed[name] = adapter.validate_python(value)
        except ValidationError as exc:
            errors += _pydantic_errors(name, exc)
        else:
            if name in _MAPPINGS:
                known[name] = set(parsed[name])
    if errors:
        # Sections that failed validation as a whole: their names are unknown, so
        # cross-references into them are not reported twice.
        for name in _MAPPINGS:
            if name in raw and name not in known:
                known[name] = set()
    errors += _Checker(parsed, known).run()
    if errors:
        raise ConfigError(errors, source=source)
    doc = RouterConfig(**parsed)
    return _build(doc, source)


class _Checker:
    """Cross-section rules over the sections that parsed; each adds FieldErrors."""

    def __init__(self, parsed: Mapping[str, Any], known: Mapping[str, set[str]]) -> None:
        self.p = parsed
        # Names present in each mapping section, valid or not: a reference to a region
        # whose own definition is broken is not also reported as "unknown".
        self.known = known
        self.errors: list[FieldError] = []

    def exists(self, section: str, name: str) -> bool:
        """True if ``name`` is defined in ``section`` (or the section cannot be judged)."""
        names = self.known.get(section)
        return names is None or name in names or not names

    def err(self, path: str, msg: str) -> None:
        self.errors.append(FieldError(path, msg))

    def run(self) -> list[FieldError]:
        self._auth()
        self.country_zone = self._zones_own_countries()
        self._zones_and_regions()
        self._clusters()
        self._references()
        self._templates()
        self._rules()
        self._namespaces()
        return self.errors

    def _auth(self) -> None:
        auth, server = self.p.get("auth"), self.p.get("server")
        tls = server.tls if server is not None else None
        if (
            tls is not None
            and tls.client_ca_file is None
            and auth is not None
            and auth.enabled
            and auth.jwt is None
        ):
            self.err(
                "server.tls.client_ca_file",
                "with auth on, callers must authenticate: give client_ca_file (mTLS), or "
                "auth.jwt (bearer tokens)",
            )

    def _zones_own_countries(self) -> dict[str, str]:
        owner: dict[str, tuple[str, int]] = {}
        for zname, zone in self.p.get("zones", {}).items():
            for i, country in enumerate(zone.countries):
                if country in owner:
                    other, j = owner[country]
                    self.err(
                        f"zones.{zname}.countries[{i}]",
                        f"{country} is already in zone {other} (zones.{other}.countries[{j}]); "
                        "a country belongs to exactly one zone",
                    )
                else:
                    owner[country] = (zname, i)
        return {c: z for c, (z, _) in owner.items()}

    def _zones_and_regions(self) -> None:
        zones, regions = self.p.get("zones", {}), self.p.get("regions", {})
        for rname, region in regions.items():
            if not self.exists("zones", region.zone):
                self.err(f"regions.{rname}.zone", f"unknown zone {region.zone!r}")
        for zname, zone in zones.items():
            home = regions.get(zone.home_region)
            if not self.exists("regions", zone.home_region):
                self.err(f"zones.{zname}.home_region", f"unknown region {zone.home_region!r}")
            elif home is not None and home.zone != zname:
                self.err(
                    f"zones.{zname}.home_region",
                    f"region {zone.home_region} is in zone {home.zone}, not {zname}",
                )

    def _clusters(self) -> None:
        seen_name: dict[str, str] = {}
        seen_endpoint: dict[str, str] = {}
        for rname, region in self.p.get("regions", {}).items():
            for i, cluster in enumerate(region.clusters):
                path = f"regions.{rname}.clusters[{i}]"
                role = "primary" if i == 0 else "standby"
                if cluster.zone is not None and cluster.zone != region.zone:
                    self.err(
                        f"{path}.zone",
                        f"{role} {cluster.name} runs in zone {cluster.zone} but its region "
                        f"{rname} is in zone {region.zone}; a region's clusters must all be "
                        "in its zone",
                    )
                if cluster.name in seen_name:
                    self.err(
                        f"{path}.name", f"duplicate cluster name (also {seen_name[cluster.name]})"
                    )
                else:
                    seen_name[cluster.name] = path
                if cluster.endpoint in seen_endpoint:
                    other = seen_endpoint[cluster.endpoint]
                    self.err(
                        f"{path}.endpoint", f"{cluster.endpoint} is also the endpoint of {other}"
                    )
                else:
                    seen_endpoint[cluster.endpoint] = path
                if cluster.tls is not None:
                    self._tls(f"{path}.tls", cluster.tls)
            if region.codec_server is not None:
                path = f"regions.{rname}.codec_server"
                if region.codec_server in seen_endpoint:
                    other = seen_endpoint[region.codec_server]
                    self.err(path, f"{region.codec_server} is also the address of {other}")
                seen_endpoint.setdefault(region.codec_server, path)

    def _tls(self, path: str, tls: ClusterTLSConfig) -> None:
        if tls.cert_file is not None and tls.key_file is None:
            self.err(f"{path}.key_file", "required with cert_file (mutual TLS needs both)")
        if tls.key_file is not None and tls.cert_file is None:
            self.err(f"{path}.cert_file", "required with key_file (mutual TLS needs both)")
        if tls.api_key_file is not None and tls.api_key_env is not None:
            self.err(f"{path}.api_key_env", "give api_key_file or api_key_env, not both")

    def _references(self) -> None:
        default = self.p.get("default_region")
        if default is not None and not self.exists("regions", default):
            self.err("default_region", f"unknown region {default!r}")
        for tname, tenant in self.p.get("tenants", {}).items():
            rz = tenant.residency_zone
            if rz is not None and not self.exists("zones", rz):
                self.err(f"tenants.{tname}.residency_zone", f"unknown zone {rz!r}")

    def _template(self, path: str, template: str, allowed: frozenset[str]) -> bool:
        if not template:
            self.err(path, "must not be empty")
            return False
        try:
            parts = list(string.Formatter().parse(template))
        except ValueError as exc:
            self.err(path, f"not a valid template: {exc}")
            return False
        choices = ", ".join("{" + a + "}" for a in sorted(allowed))
        ok = True
        for _, field, spec, conv in parts:
            if field is None:
                continue
            if field not in allowed:
                self.err(path, f"unknown placeholder {{{field}}}; allowed: {choices}")
                ok = False
            elif spec or conv:
                self.err(path, f"placeholder {{{field}}} takes no format spec or conversion")
                ok = False
        return ok

    def _templates(self) -> None:
        naming = self.p.get("naming")
        if naming is None:
            return
        self._template("naming.namespace", naming.namespace, NAMESPACE_PLACEHOLDERS)
        self._template("naming.task_queue", naming.task_queue, TASK_QUEUE_PLACEHOLDERS)
        want = {p.value for p in Priority}
        for key in naming.priority_suffix:
            if key not in want:
                self.err(f"naming.priority_suffix.{key}", "unknown priority (low, normal, high)")
        for key in sorted(want - set(naming.priority_suffix)):
            self.err(f"naming.priority_suffix.{key}", 'required (use "" for no suffix)')

    def _rules(self) -> None:
        regions = self.p.get("regions", {})
        names: dict[str, int] = {}
        matches: dict[str, int] = {}
        for i, rule in enumerate(self.p.get("rules", [])):
            path = f"rules[{i}]"
            if rule.name in BUILTIN_RULES:
                self.err(f"{path}.name", f"{rule.name!r} is the name of a built-in rule")
            if rule.name in names:
                self.err(f"{path}.name", f"duplicate rule name (also rules[{names[rule.name]}])")
            names.setdefault(rule.name, i)
            m = rule.match
            located = [k for k in ("subdivision", "country", "zone") if getattr(m, k)]
            if len(located) > 1:
                self.err(
                    f"{path}.match",
                    f"at most one of subdivision, country, zone; got {', '.join(located)}",
                )
            if m.zone is not None and not self.exists("zones", m.zone):
                self.err(f"{path}.match.zone", f"unknown zone {m.zone!r}")
            key = json.dumps(
                {k: sorted(v) if isinstance(v, list) else v for k, v in m.model_dump().items()},
                sort_keys=True,
            )
            if key in matches:
                self.err(
                    f"{path}.match",
                    f"same match as rules[{matches[key]}], which comes first and always wins",
                )
            matches.setdefault(key, i)
            if rule.namespace is not None:
                self._template(f"{path}.namespace", rule.namespace, NAMESPACE_PLACEHOLDERS)
            if rule.task_queue is not None:
                self._template(f"{path}.task_queue", rule.task_queue, TASK_QUEUE_PLACEHOLDERS)
            if not self.exists("regions", rule.region):
                self.err(f"{path}.region", f"unknown region {rule.region!r}")
            elif rule.region in regions:
                self._rule_residency(path, rule, regions[rule.region].zone)
                served = regions[rule.region].workflow_types
                for j, wt in enumerate(m.workflow_types):
                    if served is not None and wt not in served:
                        self.err(
                            f"{path}.match.workflow_types[{j}]",
                            f"region {rule.region} does not run {wt} (its workflow_types: "
                            f"{', '.join(served)}); this rule could never start it",
                        )

    def _rule_residency(self, path: str, rule: RuleConfig, region_zone: str) -> None:
        m = rule.match
        regulated = not m.data_classes or bool({"pii", "financial"} & set(m.data_classes))
        if m.subdivision is not None:
            where, zone = m.subdivision, self.country_zone.get(m.subdivision.split("-")[0])
        elif m.country is not None:
            where, zone = m.country, self.country_zone.get(m.country)
        elif m.zone is not None:
            where, zone = f"zone {m.zone}", m.zone
        else:
            return
        if regulated and zone is not None and zone != region_zone:
            self.err(
                f"{path}.region",
                f"region {rule.region} is in zone {region_zone}, but {where} is in zone {zone}: "
                "pii/financial data matched by this rule would leave its zone (restrict "
                "match.data_classes to public/internal, or pick a region of the zone)",
            )

    def _namespaces(self) -> None:
        naming, regions = self.p.get("naming"), self.p.get("regions")
        if naming is None or regions is None:
            return
        # Rules' templates by region, gathered once (not per region: 2k rules x 300
        # regions was a third of compiling such a config).
        by_region: dict[str, list[tuple[str, str]]] = {}
        for i, rule in enumerate(self.p.get("rules", [])):
            if rule.namespace is not None:
                by_region.setdefault(rule.region, []).append(
                    (rule.namespace, f"rules[{i}].namespace")
                )
        for rname, region in regions.items():
            templates = [(naming.namespace, "naming.namespace"), *by_region.get(rname, ())]
            for template, path in templates:
                try:
                    ns = template.format(region=rname, zone=region.zone)
                except (KeyError, ValueError, IndexError):
                    continue  # reported by _templates/_rules
                if not NAMESPACE_RE.match(ns):
                    self.err(path, f"renders {ns!r} for region {rname}: not a valid namespace")
                    continue
                for i, cluster in enumerate(region.clusters):
                    if cluster.namespaces is not None and ns not in cluster.namespaces:
                        self.err(
                            f"regions.{rname}.clusters[{i}].namespaces",
                            f"missing namespace {ns!r}, which {path} routes to",
                        )


def config_version(doc: RouterConfig) -> str:
    """Content hash of the canonical (defaults filled, keys sorted) document."""
    canonical = json.dumps(doc.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def region_namespaces(doc: RouterConfig) -> dict[str, tuple[str, ...]]:
    """Every namespace the naming rules can route to, by region, default first."""
    templates: dict[str, list[str]] = {}
    for rule in doc.rules:
        if rule.namespace is not None:
            templates.setdefault(rule.region, []).append(rule.namespace)
    out = {}
    for name, region in doc.regions.items():
        rendered = [
            t.format(region=name, zone=region.zone)
            for t in (doc.naming.namespace, *templates.get(name, ()))
        ]
        out[name] = tuple(dict.fromkeys(rendered))
    return out


def _build(doc: RouterConfig, source: str) -> ResolvedConfig:
    version = config_version(doc)
    clusters: dict[str, ClusterSpec] = {}
    regions: dict[str, RegionSpec] = {}
    tls: dict[str, ClusterTLS] = {}
    namespaces = region_namespaces(doc)
    for rname, region in doc.regions.items():
        specs = []
        for i, c in enumerate(region.clusters):
            if c.tls is not None:
                tls[c.name] = _cluster_tls(f"regions.{rname}.clusters[{i}].tls", c.tls)
            spec = ClusterSpec(
                name=c.name,
                endpoint=c.endpoint,
                region=rname,
                zone=region.zone,
                role=Role.PRIMARY if i == 0 else Role.STANDBY,
                namespaces=tuple(c.namespaces or namespaces[rname]),
            )
            specs.append(spec)
            clusters[c.name] = spec
        regions[rname] = RegionSpec(
            name=rname,
            zone=region.zone,
            clusters=tuple(specs),
            codec_server=region.codec_server,
            failover=_policy(doc, region.failover),
            workflow_types=(
                frozenset(region.workflow_types) if region.workflow_types is not None else None
            ),
        )
    zones = {}
    for zname, z in doc.zones.items():
        others = [r for r, spec in regions.items() if spec.zone == zname and r != z.home_region]
        zones[zname] = ZoneSpec(
            name=zname,
            countries=frozenset(z.countries),
            home_region=z.home_region,
            regions=(z.home_region, *others),
        )
    rules: dict[tuple[Level, str | None], list[Rule]] = {}
    for i, r in enumerate(doc.rules):
        rule = _rule(r, i)
        rules.setdefault((rule.level, rule.location), []).append(rule)
    sorted_rules = {k: tuple(sorted(v, key=lambda r: r.sort_key)) for k, v in rules.items()}
    table = RoutingTable(
        version=version,
        zones=MappingProxyType(zones),
        regions=MappingProxyType(regions),
        clusters=MappingProxyType(clusters),
        country_zone=MappingProxyType({c: z for z, zs in zones.items() for c in zs.countries}),
        default_region=doc.default_region,
        tenants=MappingProxyType(
            {t: TenantSpec(t, cfg.residency_zone) for t, cfg in doc.tenants.items()}
        ),
        residency=MappingProxyType(
            {t: cfg.residency_zone for t, cfg in doc.tenants.items() if cfg.residency_zone}
        ),
        rules=MappingProxyType(sorted_rules),
        rule_index=RuleIndexes.of(sorted_rules),
        naming=Naming(
            namespace=doc.naming.namespace,
            task_queue=doc.naming.task_queue,
            priority_suffix=MappingProxyType(
                {Priority(k): v for k, v in doc.naming.priority_suffix.items()}
            ),
        ),
        limits=Limits(**doc.limits.model_dump()),
        known_countries=iso3166.countries(),
        known_subdivisions=iso3166.subdivisions(),
    )
    t, h = doc.temporal, doc.health
    return ResolvedConfig(
        table=table,
        temporal=TemporalSettings(
            call_timeout=t.call_timeout_ms / 1000,
            connect_timeout=t.connect_timeout_ms / 1000,
            result_wait=t.result_wait_ms / 1000,
        ),
        health=HealthSettings(
            interval=h.interval_ms / 1000,
            failure_interval=h.failure_interval_ms / 1000,
            timeout=h.timeout_ms / 1000,
            unhealthy_threshold=h.unhealthy_threshold,
            healthy_threshold=h.healthy_threshold,
            jitter=h.jitter_ms / 1000,
        ),
        codec=CodecSettings(
            compression=doc.codec.compression,
            compression_min_bytes=doc.codec.compression_min_bytes,
            cors_origins=tuple(doc.codec.cors_origins),
            max_body_bytes=doc.codec.max_body_bytes,
            jwt=_jwt(doc.codec.jwt) if doc.codec.jwt is not None else None,
            namespaces_claim=doc.codec.jwt.namespaces_claim if doc.codec.jwt else "permissions",
        ),
        server_tls=_server_tls(doc),
        auth=_auth(doc),
        quotas=_quotas(doc),
        source=source,
        document=doc,
        cluster_tls=MappingProxyType(tls),
    )


def _cluster_tls(where: str, t: ClusterTLSConfig) -> ClusterTLS:
    def path(value: str | None) -> Path | None:
        return Path(value) if value is not None else None

    return ClusterTLS(
        where=where,
        ca_file=path(t.ca_file),
        cert_file=path(t.cert_file),
        key_file=path(t.key_file),
        server_name=t.server_name,
        api_key_file=path(t.api_key_file),
        api_key_env=t.api_key_env,
    )


def _server_tls(doc: RouterConfig) -> ServerTLS | None:
    tls = doc.server.tls
    if tls is None:
        return None
    return ServerTLS(
        cert_file=Path(tls.cert_file),
        key_file=Path(tls.key_file),
        client_ca_file=Path(tls.client_ca_file) if tls.client_ca_file else None,
        require_client_cert=tls.client_ca_file is not None,
    )


def _jwt(j: JWTConfig) -> JWTSettings:
    return JWTSettings(
        jwks_file=Path(j.jwks_file) if j.jwks_file else None,
        jwks_url=j.jwks_url,
        issuer=j.issuer,
        audience=j.audience,
        algorithms=tuple(j.algorithms),
        leeway=float(j.leeway_s),
        principal_claim=j.principal_claim,
        roles_claim=j.roles_claim,
    )


def _auth(doc: RouterConfig) -> AuthSettings:
    a = doc.auth
    jwt = _jwt(a.jwt) if a.jwt is not None else None
    grants = {
        name: Grant(
            rpcs=frozenset(g.rpcs),
            tenants=tuple(g.tenants),
            workflow_types=tuple(g.workflow_types),
            data_classes=frozenset(DataClass(d) for d in g.data_classes),
            roles=frozenset(AuthRole(r) for r in g.roles),
        )
        for name, g in a.principals.items()
    }
    return AuthSettings(
        policy=AuthPolicy(enabled=a.enabled, grants=MappingProxyType(grants)),
        identity=tuple(a.identity),
        jwt=jwt,
        denial_audit_interval=float(a.denial_audit_interval_s),
    )


def _quotas(doc: RouterConfig) -> QuotaSettings:
    q = doc.quotas

    def quota(c: QuotaConfig | None) -> Quota | None:
        return Quota(c.rate_per_s, c.burst) if c is not None else None

    return QuotaSettings(
        tenant=quota(q.tenant),
        principal=quota(q.principal),
        tenants=MappingProxyType({t: Quota(c.rate_per_s, c.burst) for t, c in q.tenants.items()}),
        principals=MappingProxyType(
            {p: Quota(c.rate_per_s, c.burst) for p, c in q.principals.items()}
        ),
    )


def _policy(doc: RouterConfig, override: FailoverOverride) -> Policy:
    merged = doc.failover.model_copy(update=override.model_dump(exclude_none=True))
    return Policy(
        mode=Mode(merged.mode),
        wait_period=merged.wait_period_ms / 1000,
        auto_failback=merged.failback == "automatic",
        failback_after=merged.failback_after_ms / 1000,
    )


def _rule(r: RuleConfig, order: int) -> Rule:
    m = r.match
    if m.subdivision is not None:
        level, location = Level.SUBDIVISION, m.subdivision
    elif m.country is not None:
        level, location = Level.COUNTRY, m.country
    elif m.zone is not None:
        level, location = Level.ZONE, m.zone
    else:
        level, location = Level.DEFAULT, None
    return Rule(
        name=r.name,
        level=level,
        location=location,
        region=r.region,
        tenants=frozenset(m.tenants),
        data_classes=frozenset(DataClass(d) for d in m.data_classes),
        workflow_types=frozenset(m.workflow_types),
        namespace=r.namespace,
        task_queue=r.task_queue,
        order=order,
    )


def worker_queues(
    table: RoutingTable, region: str, workflow_types: Iterable[str]
) -> tuple[tuple[str, str], ...]:
    """Every (namespace, task queue) the routing table can send ``workflow_types`` to in
    ``region``: by the default naming and by each rule that targets the region, at every
    priority. A worker polling all of them never misses routed work."""
    spec = table.regions[region]
    workflow_types = [wt for wt in workflow_types if spec.serves(wt)]
    rules: list[Rule | None] = [None]
    rules += [r for rs in table.rules.values() for r in rs if r.region == region]
    out = [
        names(table, spec, rule, wt, priority)
        for rule in rules
        for wt in workflow_types
        for priority in Priority
    ]
    return tuple(dict.fromkeys(out))
