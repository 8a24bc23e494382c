"""The back office as use cases over ports, the way ``service.redemption`` is: ``coupons`` (issue, look up, create
series) and ``uploads`` (accept a CSV once, its jobs) over ``ports.CouponAdmin`` (the upstream), ``ports.SeriesReader``
and ``jobs.JobStore``; ``preflight`` checks a CSV; ``models`` and ``errors`` are what they speak. No HTTP here and
no Capillary: ``service.web.backoffice`` serves them, ``service.capillary.admin`` adapts the upstream."""
