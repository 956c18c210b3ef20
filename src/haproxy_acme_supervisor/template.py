"""Rendering of ``haproxy.cfg`` from the Jinja2 template.

The template receives plain strings only, built here from validated settings,
and renders with ``StrictUndefined`` so a misspelt variable fails the start rather
than silently producing an empty keyword.
"""

from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from .config import Settings
from .errors import TemplateError

ACME_SECTION = "certlocker"


def default_template_path() -> Path:
    """Return the template shipped in the package, or the checkout's copy.

    An installed wheel carries ``templates/haproxy.cfg.j2``. An editable
    install or a plain checkout does not, and uses ``haproxy/haproxy.cfg.j2``
    at the top of the repository instead.
    """
    packaged = resources.files("haproxy_acme_supervisor") / "templates/haproxy.cfg.j2"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "haproxy" / "haproxy.cfg.j2"


def template_context(settings: Settings, template_path: Path) -> dict[str, Any]:
    """Build the variables the template may use; every value is validated."""
    paths = settings.paths
    return {
        "template_path": str(template_path),
        "admin_socket": str(settings.admin_socket),
        "ca_file": str(settings.ca_file) if settings.ca_file else "",
        "resolver": str(settings.resolver) if settings.resolver else "",
        "insecure_ca": settings.insecure_skip_verify,
        "acme_section": ACME_SECTION,
        "acme_directory": settings.acme_directory,
        "account_key": str(paths.account_key),
        "contact": settings.acme_contact or "",
        "keytype": settings.keytype,
        "curves": settings.curves,
        "bits": settings.bits,
        "reuse_key": settings.reuse_key,
        "staged_store": settings.certificates[0].store,
        "certificates": [
            {
                "alias": spec.alias,
                "domains": list(spec.domains),
                "staged_path": str(paths.staged),
            }
            for spec in settings.certificates
        ],
        "http_bind": str(settings.http_bind),
        "https_bind": str(settings.https_bind),
        "live_path": str(paths.live),
    }


def render_config(settings: Settings) -> str:
    """Render the configured (or packaged) template into configuration text.

    Raises ``TemplateError`` naming the template when it is unreadable, has a
    syntax error, or uses a variable the supervisor does not provide.
    """
    template_path = settings.template or default_template_path()
    try:
        source = template_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(template_path, f"cannot be read: {exc}") from exc

    environment = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    try:
        template = environment.from_string(source)
        return template.render(template_context(settings, template_path))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            template_path, f"syntax error on line {exc.lineno}: {exc.message}"
        ) from exc
    except jinja2.UndefinedError as exc:
        raise TemplateError(
            template_path, f"uses an undefined variable: {exc}"
        ) from exc
    except (jinja2.TemplateError, TypeError) as exc:
        # The context contains plain values, so these come from the template.
        # For example, {% include %} raises TypeError because no loader is set up.
        raise TemplateError(template_path, f"failed to render: {exc}") from exc
    except (ArithmeticError, ValueError, LookupError, RecursionError) as exc:
        # Expressions in the template itself, such as {{ 1/0 }} or a macro
        # that calls itself. The message is cut short: recursion repeats it.
        reason = f"{type(exc).__name__}: {exc}"[:200]
        raise TemplateError(template_path, f"failed to render: {reason}") from exc
