import Crypto
import Foundation

/// Verifies Finch's webhook signatures as Finch documents them and its SDKs implement them:
/// HMAC-SHA256, keyed with the base64-decoded secret, over `"{event id}.{timestamp}.{raw body}"`;
/// the `finch-signature` header holds space-separated `v1,<base64>` entries and any `v1` match
/// passes (other versions are ignored); the timestamp (Unix seconds) must be within 5 minutes
/// of now either way. Several secrets can be given, for rotation: any one may match.
///
/// - Important: Never logs or returns a secret or a signature.
public struct FinchWebhookVerifier: Sendable {
    /// Why a delivery was refused, as a stable code (metrics label, error body).
    public enum Rejection: String, Error, Sendable, CaseIterable {
        case missingHeaders = "missing_headers"
        case invalidTimestamp = "invalid_timestamp"
        case staleTimestamp = "stale_timestamp"
        case badSignature = "bad_signature"
    }

    public static let tolerance: TimeInterval = 300

    private let keys: [SymmetricKey]

    /// - Parameter secrets: Finch's webhook secrets, base64 (with or without a `whsec_` prefix).
    /// - Throws: ``FinchConfigurationError`` naming the secret's position when one is not base64.
    public init(secrets: [String]) throws(FinchConfigurationError) {
        var keys: [SymmetricKey] = []
        for (index, secret) in secrets.enumerated() {
            let text = secret.hasPrefix("whsec_") ? String(secret.dropFirst("whsec_".count)) : secret
            guard let bytes = Data(base64Encoded: text.trimmingCharacters(in: .whitespacesAndNewlines)), !bytes.isEmpty else {
                throw FinchConfigurationError("webhook secret number \(index + 1) is not base64")
            }
            keys.append(SymmetricKey(data: bytes))
        }
        guard !keys.isEmpty else { throw FinchConfigurationError("no webhook secret given") }
        self.keys = keys
    }

    /// Checks one delivery. `headers` looks a header up by its lower-case name.
    public func verify(body: some DataProtocol, header: (String) -> String?, now: Date = Date()) throws(Rejection) {
        guard let eventID = header("finch-event-id"), let timestampText = header("finch-timestamp"), let signatures = header("finch-signature"),
              !eventID.isEmpty
        else { throw .missingHeaders }
        guard let timestamp = Double(timestampText.trimmingCharacters(in: .whitespaces)), timestamp.isFinite else { throw .invalidTimestamp }
        guard abs(now.timeIntervalSince1970 - timestamp) <= Self.tolerance else { throw .staleTimestamp }
        var signed = Data("\(eventID).\(Int64(timestamp.rounded(.down))).".utf8)
        signed.append(contentsOf: body)
        let candidates = signatures.split(separator: " ").compactMap { entry -> Data? in
            let parts = entry.split(separator: ",", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, parts[0] == "v1" else { return nil }
            return Data(base64Encoded: String(parts[1]))
        }
        for key in keys {
            for candidate in candidates where HMAC<SHA256>.isValidAuthenticationCode(candidate, authenticating: signed, using: key) {
                return
            }
        }
        throw .badSignature
    }

    /// The `finch-signature` header for a delivery, as Finch would send it (for the sandbox).
    public static func signature(secret: String, eventID: String, timestamp: Int64, body: some DataProtocol) throws(FinchConfigurationError) -> String {
        let text = secret.hasPrefix("whsec_") ? String(secret.dropFirst("whsec_".count)) : secret
        guard let bytes = Data(base64Encoded: text) else { throw FinchConfigurationError("the webhook secret is not base64") }
        var signed = Data("\(eventID).\(timestamp).".utf8)
        signed.append(contentsOf: body)
        let code = HMAC<SHA256>.authenticationCode(for: signed, using: SymmetricKey(data: bytes))
        return "v1," + Data(code).base64EncodedString()
    }
}
