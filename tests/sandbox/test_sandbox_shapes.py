"""Success responses have exactly the shapes of the upstream doc samples (same keys, nesting and JSON types),
and the docs' own sample requests are accepted verbatim.

The samples below are verbatim copies of the payloads in capillary-docs/003_e644c1dd603b2cb4.txt (vendored in
tests/fixtures/capillary-docs; `test_sample_copies_are_verbatim` checks them against it). Redeem answers come
in the configured response style: ``doc`` (default) is the "Redeem Coupons" sample key for key, ``nested`` the
"Redeem Coupon (Single)" one (plus ``redemptionId``).
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from service.sandbox import DEMO
from tests.contract.samples import load_samples

#: "Redeem Coupons": the doc style's sample request and answer (flat items, the verdict only at the top).
REDEEM_COUPONS_REQUEST: dict[str, Any] = {
    "billAmount": "2000",
    "transactionNumber": "numbr9227550121",
    "user": {"mobile": "9177121900000"},
    "redemptionTime": "2019-04-04 11:49:59",
    "redemptionRequestList": [{"code": "9NUF8THR"}],
}

REDEEM_COUPONS_RESPONSE: dict[str, Any] = {
    "redemption": [
        {
            "id": 33138363,
            "warnings": [],
            "appendedErrorMessage": "",
            "code": "JL07UAZ3",
            "discountCode": "MobilePush",
            "seriesCode": 14162,
            "isAbsolute": False,
            "couponValue": 10.0,
        }
    ],
    "redemptionStatus": {"status": True, "code": 700, "message": "Coupon processing successful"},
    "customer": {
        "id": 342963216,
        "profiles": [
            {
                "firstName": "Tom",
                "lastName": "Sawyer",
                "fields": {},
                "identifiers": [{"type": "mobile", "value": "919999000000"}],
                "commChannels": [],
                "userId": 342963216,
                "accountId": "",
                "autoUpdateTime": "2019-10-31T17:41:25+05:30",
            }
        ],
    },
    "warnings": [],
}

IS_REDEEMABLE_RESPONSE: dict[str, Any] = {
    "customer": {
        "id": 325666373,
        "profiles": [
            {
                "accountId": "",
                "autoUpdateTime": "2019-04-04T11:47:28+05:30",
                "commChannels": [],
                "fields": {},
                "firstName": "firstName_667095",
                "identifiers": [
                    {"type": "email", "value": "autoemail7601667095@gmail.com"},
                    {"type": "externalId", "value": "ext_id7601667095"},
                    {"type": "mobile", "value": "917601667095"},
                ],
                "lastName": "lastName_667095",
                "userId": 325666373,
            }
        ],
    },
    "redemption": [
        {
            "appendedErrorMessage": "",
            "code": "6B88U6ED",
            "isAbsolute": False,
            "isRedeemable": True,
            "numberOfRedemptionsByUser": 0,
            "redemptionsLeft": -1,
            "warnings": [],
        },
        {
            "appendedErrorMessage": "",
            "code": "V080OLI6",
            "isAbsolute": False,
            "isRedeemable": True,
            "numberOfRedemptionsByUser": 0,
            "redemptionsLeft": -1,
            "warnings": [],
        },
    ],
    "redemptionStatus": {"code": 700, "message": "Coupon isRedeem successful", "status": True},
    "warnings": [],
}

SERIES_CREATE_REQUEST: dict[str, Any] = {
    "CouponSeriesV2": {
        "customPropertyMap": {
            "key1": "custom property 1",
            "key2": "val2",
            "standard_terms_and_conditions": "terms and condtion",
        },
        "description": "DIWALI 10% OFF",
        "discountCode": "XYZ123",
        "validTillDate": "2021-05-10T00:00:00+05:30",
        "expiryStrategyValue": 1,
        "maxCreate": -1,
        "maxRedeem": -1,
        "anyUser": False,
        "sameUserMultipleRedeem": False,
        "isReferralExistingUsersAllowed": False,
        "isMultipleUseAllowed": False,
        "isValidWithDiscountedItem": True,
        "smsTemplate": "Hi {{first_name}} {{last_name}} your voucher code "
        "{{voucher}}is valid {{valid_days_from_create}}. {{fullname}} "
        "{{offer_name}}",
        "isSMSDisabled": False,
        "info": "Evil coupon",
        "isMultipleVouchersPerUserAllowed": True,
        "doNotResendExistingVoucher": True,
        "mutualExclusiveSeriesIds": "[]",
        "maxVouchersPerUser": 11,
        "minDaysBetweenVouchers": 23,
        "discountValue": 500,
        "redemptionRange": '{"dom" : [1], "dow": [1], "hours": [1]}',
        "minBillAmount": 100,
        "maxBillAmount": 20000,
        "maxRedemptionsInSeriesPerUser": 122,
        "minDaysBetweenRedemption": 962,
        "redemptionValidFrom": "2020-11-18T00:00:00+05:30",
        "productInfo": [],
        "redemptionOrgEntityDetails": [],
        "targetUserDetails": {
            "validMaxUserTransactionLimit": 1,
            "validUserRegistrationStartTime": 0,
            "validUserRegistrationEndTime": 10000,
        },
        "redemptionValidAfterDays": 22,
        "alphaNumeric": True,
        "randomCodeLength": 10,
        "resendMessageEnabled": True,
        "clientHandlingType": "DISC_CODE",
        "expiryStrategyType": "SERIES_EXPIRY",
        "discountType": "ABS",
    }
}

SERIES_CREATE_RESPONSE: dict[str, Any] = {
    "id": 86066,
    "orgId": 100458,
    "description": "DIWALI 10% OFF",
    "discountCode": "XYZ123",
    "validTillDate": "2021-05-09T00:00:00Z",
    "validDaysFromCreation": 30,
    "expiryStrategyValue": 1,
    "maxCreate": -1,
    "maxRedeem": -1,
    "isTransferrable": False,
    "anyUser": False,
    "sameUserMultipleRedeem": False,
    "isReferralExistingUsersAllowed": False,
    "isMultipleUseAllowed": False,
    "isValidationRequired": False,
    "isValidWithDiscountedItem": True,
    "createdBy": 75040399,
    "numIssued": 0,
    "numRedeemed": 0,
    "createdOn": "2021-05-13T11:11:42Z",
    "lastUsed": "2021-05-13T11:11:41Z",
    "seriesCode": "453163F75E8C4A2EAA2E",
    "smsTemplate": "Hi {{first_name}} {{last_name}} your voucher code {{voucher}}is valid "
    "{{valid_days_from_create}}. {{fullname}} {{offer_name}}",
    "isSMSDisabled": False,
    "info": "Evil coupon",
    "isMultipleVouchersPerUserAllowed": True,
    "doNotResendExistingVoucher": True,
    "mutualExclusiveSeriesIds": "[]",
    "storeIdsJson": "[-1]",
    "isDvsEnabled": False,
    "dvsExpiryDate": "2021-05-13T00:00:00Z",
    "priority": 0,
    "shortSMSTemplate": "Hello {{cust_name}}, your voucher code is {{voucher_code}}",
    "maxVouchersPerUser": 11,
    "minDaysBetweenVouchers": 23,
    "maxReferralsPerReferee": -1,
    "discountUpto": 0,
    "discountValue": 500,
    "dvsItems": "items",
    "redemptionRange": '{"dom" : [1], "dow": [1], "hours": [1]}',
    "minBillAmount": 100,
    "maxBillAmount": 20000,
    "redeemAtStore": "[-1]",
    "campaignId": -1,
    "tag": "DIWALI 10% OFF",
    "maxRedemptionsInSeriesPerUser": 122,
    "minDaysBetweenRedemption": 962,
    "redemptionValidFrom": "2020-11-17T00:00:00Z",
    "sourceOrgId": -1,
    "issueToLoyalty": False,
    "redeemStoreType": "redeemable_stores",
    "offlineRedeemType": False,
    "isOldFlowEnabled": False,
    "isPreRedeemEventRequired": False,
    "termsAndConditions": "T&C",
    "signalRedemptionEvent": False,
    "syncToClient": False,
    "showPinCode": False,
    "targetUserDetails": {
        "validMaxUserTransactionLimit": 1,
        "validUserRegistrationStartTime": 0,
        "validUserRegistrationEndTime": 10000,
    },
    "numUploadedNonIssued": 0,
    "numUploadedTotal": 0,
    "redemptionValidAfterDays": 22,
    "ownedBy": "NONE",
    "ownerId": -1,
    "ownerValidity": 0,
    "alphaNumeric": True,
    "shortCodeLength": 0,
    "randomCodeLength": 10,
    "fixedExpiryDate": 1620518400000,
    "numTotal": 0,
    "latestIssualTime": 0,
    "latestRedemptionTime": 0,
    "resendMessageEnabled": True,
    "seriesType": "UNDEFINED",
    "clientHandlingType": "DISC_CODE",
    "expiryStrategyType": "SERIES_EXPIRY",
    "discountOn": "BILL",
    "discountType": "ABS",
    "updateProductData": False,
    "externalIssual": False,
    "warnings": [],
}

ISSUE_REQUEST: dict[str, Any] = {
    "seriesId": 12313,
    "customer": {"id": 126080386, "mobile": "", "externalId": "", "email": ""},
}

ISSUE_RESPONSE: dict[str, Any] = {
    "code": "MGU9Y4PM",
    "seriesId": 12313,
    "description": "10 units",
    "discountCode": "NO_VALUE",
    "validTill": "2119-07-10T00:00:00Z",
    "discountType": "ABS",
    "discountValue": 10.0,
    "discountUpto": 0.0,
    "discountOn": "BILL",
    "detailedInfo": "10 units",
    "customer": {
        "id": 126080386,
        "profiles": [
            {
                "firstName": "test",
                "lastName": "test",
                "fields": {},
                "identifiers": [
                    {"type": "mobile", "value": "917500000005"},
                    {"type": "email", "value": "tom.sawyer@example.com"},
                ],
                "commChannels": [],
                "userId": 126080386,
                "accountId": "",
                "autoUpdateTime": "2021-05-12T15:06:57Z",
                "identifiersAll": [
                    {"type": "mobile", "value": "917500000005"},
                    {"type": "email", "value": "tom.sawyer@example.com"},
                ],
            }
        ],
    },
    "redemptionCount": 0,
    "id": 0,
    "warnings": [],
}

BULK_ISSUE_REQUEST: dict[str, Any] = {"seriesIds": [84093, 12313], "customer": {"id": "126080386"}}

BULK_ISSUE_RESPONSE: dict[str, Any] = {
    "response": [
        {
            "entityId": 12313,
            "result": {
                "code": "L8H04VOZ",
                "seriesId": 12313,
                "description": "10 units",
                "discountCode": "NO_VALUE",
                "validTill": "2119-07-10T00:00:00Z",
                "discountType": "ABS",
                "discountValue": 10.0,
                "discountUpto": 0.0,
                "discountOn": "BILL",
                "detailedInfo": "10 units",
                "redemptionCount": 0,
                "id": 0,
            },
            "errors": [],
            "warnings": [],
        },
        {
            "entityId": 84093,
            "result": {
                "code": "U6ER8MJ5",
                "seriesId": 84093,
                "description": "Test Marvel",
                "discountCode": "NO_VALUE",
                "validTill": "2021-05-31T00:00:00Z",
                "discountType": "ABS",
                "discountValue": 100.0,
                "discountUpto": 0.0,
                "discountOn": "BILL",
                "detailedInfo": "Test Marvel",
                "redemptionCount": 0,
                "id": 0,
            },
            "errors": [],
            "warnings": [],
        },
    ],
    "totalCount": 2,
    "failureCount": 0,
}

#: "Redeem Coupon (Single)": the nested style's sample.
REDEEM_SINGLE_REQUEST: dict[str, Any] = {
    "redemptionRequestList": [{"code": "MGU9Y4PM"}],
    "user": {"mobile": "917575757575"},
    "transactionNumber": "ZDCsdss",
    "billAmount": "2000",
    "redemptionTime": "2020-06-12",
}

REDEEM_SINGLE_RESPONSE: dict[str, Any] = {
    "redemption": [
        {
            "id": 369455787,
            "currencyInput": False,
            "localToBaseCurrencyExchangeRate": 0,
            "warnings": [],
            "appendedErrorMessage": "",
            "code": "MGU9Y4PM",
            "discountCode": "NO_VALUE",
            "seriesCode": 12313,
            "isAbsolute": True,
            "couponValue": 10.0,
            "redemptionStatus": {
                "statusCode": {"status": True, "message": "Coupon processing successful", "code": 700},
                "warnings": [],
                "warningsAsStatusCode": [],
                "message": "Coupon processing successful",
                "code": 700,
                "success": True,
            },
            "discountType": "ABS",
            "discountValue": 10,
            "discountUpto": 0,
        }
    ],
    "redemptionStatus": {"status": True, "message": "Coupon processing successful", "code": 700},
    "customer": {
        "id": 126080386,
        "profiles": [
            {
                "firstName": "test",
                "lastName": "test",
                "fields": {},
                "identifiers": [
                    {"type": "mobile", "value": "917500000000"},
                    {"type": "email", "value": "tom.sawyer@test.com"},
                ],
                "commChannels": [],
                "userId": 126080386,
                "accountId": "",
                "autoUpdateTime": "2021-05-12T15:18:01Z",
                "identifiersAll": [
                    {"type": "mobile", "value": "917500000000"},
                    {"type": "email", "value": "tom.sawyer@test.com"},
                ],
            }
        ],
    },
    "warnings": [],
}

BULK_REDEEM_REQUEST: dict[str, Any] = {
    "redemptionRequestList": [{"code": "U6ER8MJ5"}, {"code": "U6ER8MH9"}],
    "redemptionTime": "2021-05-12 19:18:30",
    "transactionNumber": "numbr9435064964",
    "user": {"id": 126080386},
    "billAmount": "2000",
}

BULK_REDEEM_RESPONSE: dict[str, Any] = {
    "response": [
        {
            "entityId": 369454015,
            "result": {
                "id": 369454015,
                "currencyInput": False,
                "localToBaseCurrencyExchangeRate": 0,
                "warnings": [],
                "appendedErrorMessage": "",
                "code": "U6ER8MJ5",
                "discountCode": "NO_VALUE",
                "seriesCode": 84093,
                "isAbsolute": True,
                "couponValue": 100.0,
                "redemptionStatus": {
                    "statusCode": {"status": True, "message": "Coupon processing successful", "code": 700},
                    "warnings": [],
                    "warningsAsStatusCode": [],
                    "message": "Coupon processing successful",
                    "code": 700,
                    "success": True,
                },
                "discountType": "ABS",
                "discountValue": 100,
                "discountUpto": 0,
            },
            "errors": [],
        }
    ],
    "totalCount": 1,
    "failureCount": 0,
}

COUPON_DETAILS_RESPONSE: dict[str, Any] = {
    "data": [
        {
            "code": "1R7IOF17",
            "seriesId": 84093,
            "description": "Test Marvel",
            "discountCode": "NO_VALUE",
            "validTill": "2021-05-31T00:00:00Z",
            "discountType": "ABS",
            "discountValue": 100.0,
            "discountUpto": 0.0,
            "discountOn": "BILL",
            "detailedInfo": "Test Marvel",
        },
        {
            "code": "RNPQCPXI",
            "seriesId": 84093,
            "description": "Test Marvel",
            "discountCode": "NO_VALUE",
            "validTill": "2021-05-31T00:00:00Z",
            "discountType": "ABS",
            "discountValue": 100.0,
            "discountUpto": 0.0,
            "discountOn": "BILL",
            "detailedInfo": "Test Marvel",
        },
        {
            "code": "Z0452RAQ",
            "seriesId": 84093,
            "description": "Test Marvel",
            "discountCode": "NO_VALUE",
            "validTill": "2021-05-31T00:00:00Z",
            "discountType": "ABS",
            "discountValue": 100.0,
            "discountUpto": 0.0,
            "discountOn": "BILL",
            "detailedInfo": "Test Marvel",
        },
        {
            "code": "L6O2E1Q7",
            "seriesId": 84093,
            "description": "Test Marvel",
            "discountCode": "NO_VALUE",
            "validTill": "2021-05-31T00:00:00Z",
            "discountType": "ABS",
            "discountValue": 100.0,
            "discountUpto": 0.0,
            "discountOn": "BILL",
            "detailedInfo": "Test Marvel",
        },
        {
            "code": "HZXK4CFS",
            "seriesId": 12646,
            "description": "Welcome ",
            "discountCode": "NO_VALUE",
            "validTill": "2119-09-09T00:00:00Z",
            "discountType": "PERC",
            "discountValue": 15.0,
            "discountUpto": 0.0,
            "discountOn": "BILL",
            "detailedInfo": "Welcome ",
        },
    ],
    "warnings": [],
    "errors": [],
}

SERIES_GET_RESPONSE: dict[str, Any] = {
    "entity": [
        {
            "id": 18426,
            "orgId": 100458,
            "description": "Test Offer 20",
            "discountCode": "NO_VALUE",
            "validTillDate": "2120-02-11T10:23:17Z",
            "validDaysFromCreation": 30,
            "expiryStrategyValue": 1,
            "maxCreate": -1,
            "maxRedeem": -1,
            "isTransferrable": False,
            "anyUser": False,
            "sameUserMultipleRedeem": False,
            "isReferralExistingUsersAllowed": False,
            "isMultipleUseAllowed": False,
            "isValidationRequired": False,
            "isValidWithDiscountedItem": False,
            "createdBy": 75016470,
            "numIssued": 48847,
            "numRedeemed": 1,
            "createdOn": "2020-02-11T10:24:01Z",
            "lastUsed": "2020-02-11T10:24:01Z",
            "seriesCode": "6LQG2MOU",
            "smsTemplate": "Summer19",
            "isSMSDisabled": False,
            "info": "Test Offer 20",
            "isMultipleVouchersPerUserAllowed": False,
            "doNotResendExistingVoucher": True,
            "mutualExclusiveSeriesIds": "[]",
            "storeIdsJson": "[-1]",
            "isDvsEnabled": False,
            "dvsExpiryDate": "2020-03-12T00:00:00Z",
            "priority": 0,
            "shortSMSTemplate": "Hello {{cust_name}}, your voucher code is {{voucher_code}}",
            "maxVouchersPerUser": 1,
            "minDaysBetweenVouchers": -1,
            "maxReferralsPerReferee": -1,
            "discountUpto": 0,
            "discountValue": 20,
            "dvsItems": "false",
            "redemptionRange": '{"dom":["-1"],"dow":["-1"],"hours":["-1"]}',
            "minBillAmount": 0,
            "maxBillAmount": 9007199254740991,
            "redeemAtStore": "[-1]",
            "campaignId": -1,
            "tag": "Test Offer 20",
            "maxRedemptionsInSeriesPerUser": -1,
            "minDaysBetweenRedemption": -1,
            "redemptionValidFrom": "1970-01-01T00:00:00Z",
            "sourceOrgId": -1,
            "issueToLoyalty": False,
            "redeemStoreType": "redeemable_stores",
            "offlineRedeemType": False,
            "isOldFlowEnabled": False,
            "isPreRedeemEventRequired": False,
            "termsAndConditions": "T&C apply",
            "signalRedemptionEvent": True,
            "syncToClient": False,
            "showPinCode": False,
            "numUploadedNonIssued": 0,
            "numUploadedTotal": 0,
            "redemptionValidAfterDays": 0,
            "ownedBy": "LOYALTY",
            "ownerId": 469,
            "ownerValidity": 4737090197000,
            "alphaNumeric": True,
            "shortCodeLength": 0,
            "randomCodeLength": 8,
            "fixedExpiryDate": 0,
            "numTotal": -1,
            "latestIssualTime": 1587993924000,
            "latestRedemptionTime": 1581513319000,
            "resendMessageEnabled": True,
            "seriesType": "LOYALTY",
            "clientHandlingType": "DISC_CODE",
            "expiryStrategyType": "SERIES_EXPIRY",
            "discountOn": "BILL",
            "discountType": "PERC",
            "externalIssual": False,
            "updateProductData": False,
        }
    ],
    "warnings": [],
}

UPLOAD_COUPONS_RESPONSE: dict[str, Any] = {
    "success": True,
    "status": 200,
    "result": {
        "orgId": 0,
        "couponSeriesId": 123,
        "uploadJobStatuses": [
            {
                "jobId": 1,
                "uploadStatus": "STARTED",
                "createdOn": "1601835836973",
                "updatedOn": "1601835836973",
                "errorFileUrl": None,
                "successFileUrl": None,
                "uploadedFileUrl": "couponCode_1601835836573_123.csv",
                "totalUploadedCount": 0,
                "actualRowCount": 0,
                "errorCount": 0,
                "uploadTableName": None,
                "uploadedFileName": "couponCode.csv",
                "audienceGroupId": 0,
                "audienceGroupVersionId": 0,
            }
        ],
        "fileName": "couponCode_1601835836573_123.csv",
    },
}

UPLOAD_REDEEMED_RESPONSE: dict[str, Any] = {
    "success": True,
    "status": 200,
    "result": {
        "orgId": 9619,
        "couponSeriesId": 953234,
        "redeemUploadJobStatuses": [
            {
                "jobId": 9137,
                "uploadRedeemedCouponStatus": "QUEUED",
                "createdOn": "1603263535389",
                "updatedOn": "1603263535389",
                "errorFileUrl": None,
                "successFileUrl": None,
                "uploadedFileUrl": "couponCode_9603263533789_253294.csv",
                "totalUploadedCount": 0,
                "actualRowCount": 0,
                "errorCount": 0,
                "uploadTableName": None,
                "uploadedFileName": "couponCode_9603263533789_253294.csv",
            }
        ],
        "fileName": "couponCode_9603263533789_253294.csv",
    },
}

UPLOAD_STATUS_RESPONSE: dict[str, Any] = {
    "success": True,
    "status": 200,
    "result": {
        "orgId": 2345,
        "couponSeriesId": 253543,
        "uploadJobStatuses": [
            {
                "jobId": 93477,
                "uploadStatus": "FINISHED",
                "createdOn": "1603101625000",
                "updatedOn": "1603101632000",
                "errorFileUrl": "error_1619_2532342020_10_19_15_30_32",
                "successFileUrl": None,
                "uploadedFileUrl": "couponCode_1603101623721_253234.csv",
                "totalUploadedCount": 3,
                "actualRowCount": 3,
                "errorCount": 3,
                "uploadTableName": "temp_1619_20201019_153531582",
                "uploadedFileName": "couponCode.csv",
                "audienceGroupId": 0,
                "audienceGroupVersionId": 0,
            }
        ],
    },
}

REDEEMED_UPLOAD_STATUS_RESPONSE: dict[str, Any] = {
    "success": True,
    "status": 200,
    "result": {
        "orgId": 9838,
        "couponSeriesId": 909234,
        "redeemUploadJobStatuses": [
            {
                "jobId": 4455,
                "uploadRedeemedCouponStatus": "COMPLETED",
                "createdOn": "1603132200000",
                "updatedOn": "1603132200000",
                "errorFileUrl": "error_redemption_upload_1619_2532342020_10_20_14_17_00",
                "successFileUrl": None,
                "uploadedFileUrl": "couponCode_1603183613031_253234.csv",
                "totalUploadedCount": 1,
                "actualRowCount": 1,
                "errorCount": 1,
                "uploadTableName": "temp_redemption_upload_1619_20201020_141700172",
                "uploadedFileName": "couponCode_1603183613081_259234.csv",
            },
            {
                "jobId": 4456,
                "uploadRedeemedCouponStatus": "COMPLETED",
                "createdOn": "1603132200000",
                "updatedOn": "1603132200000",
                "errorFileUrl": "error_redemption_upload_1619_2532342020_10_20_17_33_14",
                "successFileUrl": None,
                "uploadedFileUrl": "couponCode_1603195385330_253234.csv",
                "totalUploadedCount": 1,
                "actualRowCount": 1,
                "errorCount": 1,
                "uploadTableName": "temp_redemption_upload_1619_20201020_173313820",
                "uploadedFileName": "couponCode_1603195345330_253564.csv",
            },
            {
                "jobId": 4457,
                "uploadRedeemedCouponStatus": "COMPLETED",
                "createdOn": "1603218600000",
                "updatedOn": "1603218600000",
                "errorFileUrl": "error_redemption_upload_1619_2532342020_10_21_12_29_00",
                "successFileUrl": None,
                "uploadedFileUrl": "couponCode_1603263533789_253234.csv",
                "totalUploadedCount": 1,
                "actualRowCount": 1,
                "errorCount": 1,
                "uploadTableName": "temp_redemption_upload_1619_20201021_122859950",
                "uploadedFileName": "couponCode_1603263533789_253234.csv",
            },
        ],
    },
}


# ---- shape comparison ------------------------------------------------------------------------------------------


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    for typ, name in ((int, "int"), (float, "float"), (str, "str"), (list, "list"), (dict, "object")):
        if isinstance(value, typ):
            return name
    raise AssertionError(f"not JSON: {value!r}")


def assert_shape(actual: Any, sample: Any, path: str = "$", extra: frozenset[str] = frozenset()) -> None:
    """Every key of the sample is present with the same JSON type (recursively; lists by their first item).
    Keys beyond the sample's are allowed only when listed in `extra` (by key name)."""
    if sample is None:
        return  # null in the sample: the type is not pinned down
    assert json_type(actual) == json_type(sample), f"{path}: {json_type(actual)} != {json_type(sample)}"
    if isinstance(sample, dict):
        missing = set(sample) - set(actual)
        assert not missing, f"{path}: missing {sorted(missing)}"
        unexpected = set(actual) - set(sample) - extra
        assert not unexpected, f"{path}: unexpected {sorted(unexpected)}"
        for key, value in sample.items():
            assert_shape(actual[key], value, f"{path}.{key}", extra)
    elif isinstance(sample, list) and sample and actual:
        assert_shape(actual[0], sample[0], f"{path}[0]", extra)


def add_doc_data(kit):
    """The customers, series and coupons the doc samples name, so that the doc's own requests can be sent
    verbatim (series as the answers describe them: 12313 ABS 10, 84093 ABS 100, 14162 PERC 10 "MobilePush")."""
    sandbox = kit.sandbox
    sandbox.add_customer(customer_id=126080386, mobile="917575757575", email="tom.sawyer@example.com")
    sandbox.add_customer(customer_id=342963216, mobile="9177121900000", first_name="Tom", last_name="Sawyer")
    sandbox.add_series(description="10 units", series_id=12313, discount_value=10, discount_code="NO_VALUE")
    sandbox.add_series(description="Test Marvel", series_id=84093, discount_value=100, discount_code="NO_VALUE")
    sandbox.add_series(
        description="10 % off", series_id=14162, discount_type="PERC", discount_value=10, discount_code="MobilePush"
    )
    sandbox.issue_coupon(12313, 126080386, "MGU9Y4PM")
    sandbox.issue_coupon(84093, 126080386, "U6ER8MJ5")
    sandbox.issue_coupon(84093, 126080386, "U6ER8MH9")
    sandbox.issue_coupon(14162, 342963216, "9NUF8THR")
    return kit


@pytest.fixture
async def doc_kit(kit):
    return add_doc_data(kit)


@pytest.fixture
async def nested_doc_kit(make_kit):
    return add_doc_data(await make_kit(response_style="nested"))


async def test_token_shape(kit):
    response = await kit.client.post(
        "/v3/oauth/token/generate", json={"key": DEMO.client_key, "secret": DEMO.client_secret}
    )
    assert_shape(await response.json(), {"data": {"accessToken": "x", "ttlSeconds": 300}, "errors": None})


def test_sample_copies_are_verbatim():
    """The copies above are the documents' own payloads (as vendored), not retyped approximations."""
    documented = [sample.payload for sample in load_samples() if sample.file.startswith("003_")]
    for copy in (
        REDEEM_COUPONS_REQUEST,
        REDEEM_COUPONS_RESPONSE,
        REDEEM_SINGLE_REQUEST,
        REDEEM_SINGLE_RESPONSE,
        BULK_REDEEM_REQUEST,
        BULK_REDEEM_RESPONSE,
        IS_REDEEMABLE_RESPONSE,
    ):
        assert copy in documented


def assert_order(actual: dict[str, Any], sample: dict[str, Any]) -> None:
    assert list(actual) == list(sample)


async def test_redeem_doc_style_is_the_redeem_coupons_sample_key_for_key(doc_kit):
    assert doc_kit.sandbox.options.response_style == "doc"  # the default
    status, body = await doc_kit.post("/v2/coupon/redeem", REDEEM_COUPONS_REQUEST)
    assert status == 200
    assert_shape(body, REDEEM_COUPONS_RESPONSE)  # no key beyond the sample's, none missing, same JSON types
    (item,) = body["redemption"]
    assert_order(item, REDEEM_COUPONS_RESPONSE["redemption"][0])
    assert_order(body["redemptionStatus"], REDEEM_COUPONS_RESPONSE["redemptionStatus"])
    # The sample's meaning: a 10 % coupon on a bill of 2000 says couponValue 10.0 (its face value), not 200.
    assert (item["code"], item["discountCode"], item["seriesCode"], item["isAbsolute"], item["couponValue"]) == (
        "9NUF8THR",
        "MobilePush",
        14162,
        False,
        10.0,
    )
    (redemption,) = doc_kit.sandbox.redemptions_of("9NUF8THR")
    assert (item["id"], redemption.discount) == (redemption.id, 200)
    assert body["redemptionStatus"] == {"status": True, "code": 700, "message": "Coupon processing successful"}


async def test_redeem_doc_style_answers_the_single_sample_request_in_the_doc_shape(doc_kit):
    status, body = await doc_kit.post("/v2/coupon/redeem", REDEEM_SINGLE_REQUEST)
    assert status == 200
    assert_shape(body, REDEEM_COUPONS_RESPONSE)
    item = body["redemption"][0]
    assert (item["code"], item["seriesCode"], item["isAbsolute"], item["couponValue"]) == (
        "MGU9Y4PM",
        12313,
        True,
        10.0,
    )


async def test_redeem_nested_style_is_the_redeem_coupon_single_sample(nested_doc_kit):
    status, body = await nested_doc_kit.post("/v2/coupon/redeem", REDEEM_SINGLE_REQUEST)
    assert status == 200
    assert_shape(body, REDEEM_SINGLE_RESPONSE, extra=frozenset({"redemptionId"}))
    item = body["redemption"][0]
    assert (item["code"], item["seriesCode"], item["isAbsolute"]) == ("MGU9Y4PM", 12313, True)
    # The sample: an ABS coupon of 10 says couponValue 10.0 and discountValue 10.
    assert (item["couponValue"], item["discountValue"], item["discountUpto"]) == (10.0, 10, 0)
    assert item["redemptionId"] == item["id"] == nested_doc_kit.sandbox.redemptions_of("MGU9Y4PM")[0].id


@pytest.mark.parametrize("failure_status", [400, 200])
async def test_redeem_doc_style_refusal_is_the_sample_shape_with_a_false_top_status(make_kit, failure_status):
    kit = await make_kit(failure_http_status=failure_status)
    status, body = await kit.redeem("ABS-ALICE-USED")
    assert status == failure_status
    assert_shape(body, REDEEM_COUPONS_RESPONSE)  # an item without a status of its own, as in the sample
    assert body["redemptionStatus"] == {"status": False, "code": 711, "message": "Coupon is already used"}
    (item,) = body["redemption"]
    assert (item["id"], item["code"], item["appendedErrorMessage"]) == (-1, "ABS-ALICE-USED", "Coupon is already used")
    assert item["warnings"] == []  # the top-level status is the only verdict
    _, unknown = await kit.redeem("NOPE-0000")
    no_series = set(REDEEM_COUPONS_RESPONSE["redemption"][0]) - {"discountCode", "seriesCode"}
    assert set(unknown["redemption"][0]) == no_series  # no series to describe
    assert unknown["redemptionStatus"]["code"] == 719


async def test_redeem_nested_style_refusal_keeps_the_envelope(make_kit):
    kit = await make_kit(response_style="nested")
    status, body = await kit.redeem("ABS-BOB-1")
    assert status == 400
    assert_shape(body, REDEEM_SINGLE_RESPONSE, extra=frozenset({"redemptionId"}))
    assert body["redemption"][0]["redemptionStatus"]["statusCode"] == {
        "status": False,
        "message": "Coupon is not meant for this customer",
        "code": 710,
    }
    _, unknown = await kit.redeem("NOPE-0000")
    assert {"discountType", "seriesCode"}.isdisjoint(unknown["redemption"][0])  # no series to describe


async def test_bulk_redeem_doc_style_is_the_bulk_sample_key_for_key(doc_kit):
    status, body = await doc_kit.post("/v2/coupon/bulk/redeem", BULK_REDEEM_REQUEST, params={"source": "INSTORE"})
    assert status == 200
    assert_shape(body, BULK_REDEEM_RESPONSE)
    entry = body["response"][0]
    assert_order(entry["result"], BULK_REDEEM_RESPONSE["response"][0]["result"])
    assert entry["entityId"] == entry["result"]["id"]
    result = entry["result"]
    assert (result["isAbsolute"], result["couponValue"], result["discountValue"]) == (True, 100.0, 100)


async def test_bulk_redeem_nested_style_adds_the_redemption_id(nested_doc_kit):
    status, body = await nested_doc_kit.post(
        "/v2/coupon/bulk/redeem", BULK_REDEEM_REQUEST, params={"source": "INSTORE"}
    )
    assert status == 200
    assert_shape(body, BULK_REDEEM_RESPONSE, extra=frozenset({"redemptionId"}))
    assert all(e["result"]["redemptionId"] == e["entityId"] for e in body["response"])


@pytest.mark.parametrize("style", ["doc", "nested"])
async def test_bulk_redeem_refusal_names_each_code_in_errors(make_kit, style):
    kit = await make_kit(response_style=style)
    status, body = await kit.bulk_redeem("ABS-ALICE-1", "ABS-ALICE-USED")
    assert status == 400
    assert [e["errors"][0]["code"] for e in body["response"]] == [749, 711]
    assert [e["entityId"] for e in body["response"]] == [-1, -1]
    assert_shape(body, BULK_REDEEM_RESPONSE, extra=frozenset({"redemptionId"} if style == "nested" else ()))


async def test_is_redeemable_shape_is_exactly_the_sample(kit):
    _, body = await kit.is_redeemable("ABS-ALICE-1", "PERC-ALICE-1")
    assert_shape(body, IS_REDEEMABLE_RESPONSE)
    _, failing = await kit.is_redeemable("ABS-BOB-1")
    assert_shape(failing, IS_REDEEMABLE_RESPONSE)


@pytest.mark.parametrize("details", ["true", "extended", "TRUE", "false"])
async def test_is_redeemable_accepts_details_and_keeps_the_sample_shape(kit, details):
    """details=true|extended is documented (series details) but no sample shows them: the default answer stays
    the sample's shape, so a client must fall back to coupon details."""
    params = {"mobile": DEMO.customer("alice").mobile, "code": "ABS-ALICE-1,PERC-ALICE-1", "details": details}
    status, body = await kit.get("/v2/coupon/is_redeemable", params)
    assert status == 200
    assert_shape(body, IS_REDEEMABLE_RESPONSE)


async def test_is_redeemable_refuses_an_undocumented_details_value(kit):
    params = {"mobile": DEMO.customer("alice").mobile, "code": "ABS-ALICE-1", "details": "yes"}
    status, body = await kit.get("/v2/coupon/is_redeemable", params)
    assert (status, body["code"]) == (400, 629)
    assert "details" in body["message"]


async def test_is_redeemable_series_switch_adds_series_id_when_details_are_asked(make_kit):
    kit = await make_kit(is_redeemable_series=True)
    mobile = DEMO.customer("alice").mobile
    _, with_details = await kit.get(
        "/v2/coupon/is_redeemable", {"mobile": mobile, "code": "ABS-ALICE-1,NOPE-0000", "details": "true"}
    )
    assert_shape(with_details, IS_REDEEMABLE_RESPONSE, extra=frozenset({"seriesId"}))
    known, unknown = with_details["redemption"]
    assert known["seriesId"] == DEMO.series_of("abs").id
    assert "seriesId" not in unknown
    _, without = await kit.get(
        "/v2/coupon/is_redeemable", {"mobile": mobile, "code": "ABS-ALICE-1", "details": "false"}
    )
    assert_shape(without, IS_REDEEMABLE_RESPONSE)


async def test_series_create_doc_request_verbatim_and_response_shape(kit):
    status, body = await kit.post("/v2/coupon/series", SERIES_CREATE_REQUEST)
    assert status == 200
    assert_shape(body, SERIES_CREATE_RESPONSE)
    assert (body["discountType"], body["maxVouchersPerUser"], body["redemptionRange"]) == (
        "ABS",
        11,
        SERIES_CREATE_REQUEST["CouponSeriesV2"]["redemptionRange"],
    )


async def test_series_get_shape_is_exactly_the_sample(kit):
    _, body = await kit.get("/v2/coupon/series", {"ids": str(DEMO.series_of("perc").id)})
    assert_shape(body, SERIES_GET_RESPONSE)
    assert list(body["entity"][0]) == list(SERIES_GET_RESPONSE["entity"][0])  # same field order too


async def test_issue_doc_request_verbatim_and_response_shape(doc_kit):
    status, body = await doc_kit.post("/v2/coupon/issue", ISSUE_REQUEST)
    assert status == 200
    assert_shape(body, ISSUE_RESPONSE)
    assert body["customer"]["id"] == 126080386


async def test_bulk_issue_doc_request_verbatim_and_response_shape(doc_kit):
    status, body = await doc_kit.post("/v2/coupon/bulk/issue", BULK_ISSUE_REQUEST, params={"source": "INSTORE"})
    assert status == 200
    assert_shape(body, BULK_ISSUE_RESPONSE)
    assert [e["entityId"] for e in body["response"]] == [84093, 12313]


async def test_coupon_details_shape(kit):
    _, body = await kit.get("/v2/coupon", {"issuedToIds": "500001"})
    assert_shape(body, COUPON_DETAILS_RESPONSE, extra=frozenset({"id", "redemptionCount", "issuedTo"}))


async def test_upload_shapes(kit):
    series = DEMO.series_of("abs").id
    headers = await kit.oauth()

    def form(**fields: str) -> aiohttp.FormData:
        data = aiohttp.FormData()
        data.add_field("file", b"customerIdentifier,couponCode\n500002,SHAPE-1\n910000000000,SHAPE-2\n",
                       filename="couponCode.csv")  # fmt: skip
        for name, value in fields.items():
            data.add_field(name, value)
        return data

    started = await kit.client.post(
        f"/coupon/api/v1/upload/file/{series}",
        data=form(customerIdentifier="USER_ID", customerIdentifierColumn="0"),
        headers=headers,
    )
    assert_shape(await started.json(), UPLOAD_COUPONS_RESPONSE)
    queued = await kit.client.post(
        f"/coupon/api/v1/upload/redeemFile/{series}",
        data=form(
            customerIdentifier="USER_ID",
            couponIdentifier="COUPON_CODE",
            uploadHeaders='{"redeemedDateInMillis": 0, "redeemedAt": 1, "userId": 2, "couponCode": 3}',
        ),
        headers=headers,
    )
    assert_shape(await queued.json(), UPLOAD_REDEEMED_RESPONSE)
    kit.sandbox.advance(5)
    finished = await kit.client.get(f"/coupon/api/v1/upload/getUploadStatus/{series}", headers=headers)
    assert_shape(await finished.json(), UPLOAD_STATUS_RESPONSE)
    completed = await kit.client.get(f"/coupon/api/v1/upload/getUploadRedeemedCouponStatus/{series}", headers=headers)
    assert_shape(await completed.json(), REDEEMED_UPLOAD_STATUS_RESPONSE)
