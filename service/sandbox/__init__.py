"""An embedded, stateful impersonation of Capillary's coupon API (v2 + v1 uploads), for demos and tests.

Public API::

    from service.sandbox import SandboxConfig, Sandbox, SANDBOX_KEY, create_sandbox_app, Fault, FaultKind, DEMO

    app = create_sandbox_app(SandboxConfig(upload_job_seconds=0.1))
    sandbox = app[SANDBOX_KEY]          # .state, .faults, .calls, .call_count(op), .advance(s), ...

It is an independent model of the upstream (it does not import the gateway's Capillary client), so it can
catch the client's mistakes. See `state` for the rule order, `faults` for fault matching, `app` for the
request pipeline, `uploads` for CSV handling and `seed.DEMO` for the demo data.

Admin endpoints (no auth; JSON; never part of the upstream contract):

    GET    /__sandbox/demo            the DEMO data
    GET    /__sandbox/state           counts, redemptions (with reversed flag), upload jobs with row errors
    POST   /__sandbox/reset           reseed state, clock offset, calls, faults (tokens stay valid)
    GET    /__sandbox/faults          pending faults with remaining uses
    POST   /__sandbox/faults          one fault or a list: {"kind": "apply_then_timeout", "operation": "redeem",
                                      "times": 1, "status": 502, "delaySeconds": 0.5, "code": 748,
                                      "apply": false, "body": "<raw body>", "target": "<coupon code>",
                                      "scope": "both"}  (201; see `faults` for the kinds and their shapes)
    DELETE /__sandbox/faults          clear
    GET    /__sandbox/calls           {"calls": [...], "counts": {"redeem": 2, ...}};  DELETE clears
    GET    /__sandbox/clock           {"now": ...};  POST {"advanceSeconds": n} or {"now": "<ISO with offset>"}
    POST   /__sandbox/tokens/revoke   invalidate every issued OAuth token
    GET    /__sandbox/options         POST {"failureHttpStatus": 200|400, "latencyMs": n,
                                      "isRedeemableAllOrNothing": bool, "responseStyle": "doc"|"nested"|"mixed",
                                      "isRedeemableSeries": bool}

Environment (`SandboxConfig.from_env`): SANDBOX_CLIENT_KEY, SANDBOX_CLIENT_SECRET, SANDBOX_TOKEN_TTL_SECONDS,
SANDBOX_LATENCY_MS, SANDBOX_UPLOAD_JOB_SECONDS, SANDBOX_FAILURE_HTTP_STATUS (200|400), SANDBOX_RESPONSE_STYLE
(doc|nested|mixed, default doc), SANDBOX_IS_REDEEMABLE_SERIES (on|off, default off) and SANDBOX_FAULTS (a JSON
list of fault objects as above). A bad value raises ValueError naming the variable.

Speaking as the documents do (capillary-docs/003_e644c1dd603b2cb4.txt):

- Redeem answers take the response style (`SandboxConfig.response_style`, ``options.response_style``): ``doc``
  is the "Redeem Coupons" sample key for key (items ``{id, warnings, appendedErrorMessage, code, discountCode,
  seriesCode, isAbsolute, couponValue}``, the verdict only in the top-level ``redemptionStatus {status, code,
  message}``, refusals included: item id -1, ``warnings`` empty, only ``appendedErrorMessage`` says why), and
  bulk redeem the "Redeem Customer Coupons (Bulk)" sample; ``nested`` adds the per-item nested
  ``redemptionStatus``, ``redemptionId``, ``discountType``/``discountValue``/``discountUpto`` ("Redeem Coupon
  (Single)"), a refused item naming its code in ``warnings`` too; ``mixed`` alternates per redeem or bulk redeem
  call, doc first (`Sandbox.next_style`; each call records its ``style``).
- ``couponValue`` is the coupon's face value (ABS: the amount; PERC: the percent), never the discount given.
- ``is_redeemable`` answers the sample's shape whatever ``details`` (true|false|extended) says; with
  ``is_redeemable_series`` each item also carries ``seriesId`` when details are asked.
- The v1 upload host takes OAuth only (the token header, or ``Authorization: Bearer`` as a doc sample sends it);
  Basic credentials there get 401. Upload forms accept only their documented fields (``Details``, not
  ``details``): another field is a 400 naming it.
"""

from .app import ADMIN_PREFIX, SANDBOX_KEY, create_sandbox_app
from .config import SandboxConfig, Till
from .faults import OPERATIONS, Fault, FaultKind, FaultQueue
from .sandbox import Call, RuleViolation, Sandbox, SandboxOptions
from .seed import DEMO, DemoCoupon, DemoCustomer, DemoData, DemoRedemption, DemoSeries
from .state import Coupon, Customer, Redemption, SandboxState, Series, UploadJob

__all__ = [
    "ADMIN_PREFIX",
    "DEMO",
    "OPERATIONS",
    "SANDBOX_KEY",
    "Call",
    "Coupon",
    "Customer",
    "DemoCoupon",
    "DemoCustomer",
    "DemoData",
    "DemoRedemption",
    "DemoSeries",
    "Fault",
    "FaultKind",
    "FaultQueue",
    "Redemption",
    "RuleViolation",
    "Sandbox",
    "SandboxConfig",
    "SandboxOptions",
    "SandboxState",
    "Series",
    "Till",
    "UploadJob",
    "create_sandbox_app",
]
