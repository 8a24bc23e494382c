"""pos-coupon-gateway: a safe front for Capillary coupon redemption."""

__version__ = "0.1.0"
