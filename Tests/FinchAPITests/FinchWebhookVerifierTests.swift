import FinchAPI
import Foundation
import Testing

/// Finch's webhook signature scheme, on the test vector Finch's own SDK tests use.
@Suite("Finch webhook signatures")
struct FinchWebhookVerifierTests {
    let secret = "5WbX5kEWLlfzsGNjH64I8lOOqUB6e8FH"
    let eventID = "msg_2Lh9KRb0pzN4LePd3XiA4v12Axj"
    let timestamp: Int64 = 1_676_312_382
    let body = Array(#"{"company_id":"720be419-0293-4d32-a707-32179b0827ab"}"#.utf8)
    let good = "v1,m7y0TV2C+hlHxU42wCieApTSTaA8/047OAplBqxIV/s="
    var at: Date { Date(timeIntervalSince1970: TimeInterval(timestamp)) }

    func verify(_ signature: String?, eventID: String? = nil, timestamp: String? = nil, body: [UInt8]? = nil, secrets: [String]? = nil, now: Date? = nil) throws(FinchWebhookVerifier.Rejection) {
        let headers = ["finch-event-id": eventID ?? self.eventID, "finch-timestamp": timestamp ?? "\(self.timestamp)", "finch-signature": signature]
        let verifier = try! FinchWebhookVerifier(secrets: secrets ?? [secret])
        try verifier.verify(body: body ?? self.body, header: { headers[$0] ?? nil }, now: now ?? at)
    }

    @Test("Finch's test vector verifies, and the sandbox's signer produces exactly its signature")
    func vector() throws {
        try verify(good)
        #expect(try FinchWebhookVerifier.signature(secret: secret, eventID: eventID, timestamp: timestamp, body: body) == good)
    }

    @Test("Any v1 entry may match; other versions are ignored; a wrong body, id or secret fails")
    func entries() {
        #expect(throws: Never.self) { try verify("v1,bm90IGl0 \(good)") }
        #expect(throws: FinchWebhookVerifier.Rejection.badSignature) { try verify(good.replacingOccurrences(of: "v1,", with: "v2,")) }
        #expect(throws: FinchWebhookVerifier.Rejection.badSignature) { try verify("v1,not-base64!!") }
        #expect(throws: FinchWebhookVerifier.Rejection.badSignature) { try verify(good, body: Array(#"{"company_id":"x"}"#.utf8)) }
        #expect(throws: FinchWebhookVerifier.Rejection.badSignature) { try verify(good, eventID: "msg_other") }
        #expect(throws: FinchWebhookVerifier.Rejection.badSignature) { try verify(good, secrets: ["c2VjcmV0"]) }
        #expect(throws: Never.self) { try verify(good, secrets: ["c2VjcmV0", secret]) }  // rotation: either secret
    }

    @Test("A timestamp 6 minutes off either way fails; 5 minutes passes; missing headers and a non-number are refused")
    func timestamps() {
        #expect(throws: FinchWebhookVerifier.Rejection.staleTimestamp) { try verify(good, now: at.addingTimeInterval(360)) }
        #expect(throws: FinchWebhookVerifier.Rejection.staleTimestamp) { try verify(good, now: at.addingTimeInterval(-360)) }
        #expect(throws: Never.self) { try verify(good, now: at.addingTimeInterval(300)) }
        #expect(throws: FinchWebhookVerifier.Rejection.missingHeaders) { try verify(nil) }
        #expect(throws: FinchWebhookVerifier.Rejection.invalidTimestamp) { try verify(good, timestamp: "yesterday") }
    }

    @Test("A secret that is not base64 is refused at startup, naming its position, never its value")
    func badSecret() {
        let error = #expect(throws: FinchConfigurationError.self) { try FinchWebhookVerifier(secrets: ["c2VjcmV0", "not base64 ###"]) }
        #expect(error?.description == "webhook secret number 2 is not base64")
    }
}
