import AsyncHTTPClient
import FinchAPI
import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// Delivers Finch's job completion webhooks the way Finch does: when a job reaches its
/// terminal status, `POST` a `job.<type>.completed` event to the webhook URL, signed with
/// Finch's scheme (`finch-event-id`, `finch-timestamp`, `finch-signature`), again with backoff
/// while the receiver answers anything but 2xx. A fraction can be dropped, as if lost.
/// Run it as a service beside the sandbox's HTTP server.
public final class SandboxWebhooks: Service, Sendable {
    public struct Stats: Sendable, Hashable, Codable {
        /// Events the receiver accepted (2xx), dropped on purpose, and given up after every attempt.
        public var delivered = 0
        public var dropped = 0
        public var gaveUp = 0
        /// Attempts answered with anything but 2xx (or not answered).
        public var failedAttempts = 0
    }

    struct Delivery: Sendable {
        let eventType: String
        let connectionID: String
        let jobID: String
        let jobURL: String
        let after: Duration
    }

    public let url: String
    private let secret: String
    private let dropRate: Double
    private let maxAttempts: Int
    private let initialBackoff: Duration
    private let client: HTTPClient
    private let logger: Logger
    private let queue: AsyncStream<Delivery>
    private let enqueue: AsyncStream<Delivery>.Continuation
    private let counts = Mutex(Stats())

    /// - Throws: ``FinchConfigurationError`` when the secret is not base64.
    public init(url: String, secret: String, dropRate: Double = 0, maxAttempts: Int = 8, initialBackoff: Duration = .milliseconds(250), logger: Logger) throws(FinchConfigurationError) {
        _ = try FinchWebhookVerifier(secrets: [secret])
        self.url = url
        self.secret = secret
        self.dropRate = dropRate
        self.maxAttempts = max(1, maxAttempts)
        self.initialBackoff = initialBackoff
        self.logger = logger
        self.client = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: .init(redirectConfiguration: .disallow))
        (queue, enqueue) = AsyncStream.makeStream(of: Delivery.self)
    }

    public var stats: Stats { counts.withLock { $0 } }

    /// Sends the completion event of a job once it reaches its terminal status, `after` from now.
    func jobCreated(type: String, connectionID: String, jobID: String, jobURL: String, after: Duration) {
        enqueue.yield(Delivery(eventType: "job.\(type).completed", connectionID: connectionID, jobID: jobID, jobURL: jobURL, after: after))
    }

    public func run() async throws {
        // Stops at shutdown: pending deliveries are dropped with it, as Finch's would be by an
        // outage; the receiver's polling fallback covers them.
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                for await delivery in self.queue {
                    group.addTask { await self.deliver(delivery) }
                }
            }
        }
        enqueue.finish()
        try? await client.shutdown()
    }

    private func deliver(_ delivery: Delivery) async {
        guard (try? await Task.sleep(for: delivery.after)) != nil else { return }
        if Double.random(in: 0..<1) < dropRate {
            counts.withLock { $0.dropped += 1 }
            return
        }
        let eventID = "msg_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        let event: [String: Any] = [
            "account_id": delivery.connectionID, "company_id": delivery.connectionID, "connection_id": delivery.connectionID,
            "event_type": delivery.eventType, "data": ["job_id": delivery.jobID, "job_url": delivery.jobURL],
        ]
        let body = (try? JSONSerialization.data(withJSONObject: event, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
        var wait = initialBackoff
        for attempt in 1...maxAttempts {
            // Each attempt is signed anew, with its own timestamp, as Finch's are.
            let timestamp = Int64(Date().timeIntervalSince1970)
            var request = HTTPClientRequest(url: url)
            request.method = .POST
            request.headers.add(name: "content-type", value: "application/json")
            request.headers.add(name: "finch-event-id", value: eventID)
            request.headers.add(name: "finch-timestamp", value: String(timestamp))
            request.headers.add(name: "finch-signature", value: (try? FinchWebhookVerifier.signature(secret: secret, eventID: eventID, timestamp: timestamp, body: body)) ?? "")
            request.body = .bytes(ByteBuffer(bytes: body))
            let status: UInt?
            do {
                let response = try await client.execute(request, timeout: .seconds(10))
                _ = try? await response.body.collect(upTo: 1 << 20)
                status = response.status.code
            } catch {
                status = nil
            }
            if let status, (200..<300).contains(status) {
                counts.withLock { $0.delivered += 1 }
                return
            }
            counts.withLock { $0.failedAttempts += 1 }
            logger.debug("webhook delivery failed; retrying", metadata: ["event_id": "\(eventID)", "status": "\(status.map(String.init) ?? "none")", "attempt": "\(attempt)"])
            guard attempt < maxAttempts, (try? await Task.sleep(for: wait)) != nil else { break }
            wait = min(wait * 2, .seconds(8))
        }
        counts.withLock { $0.gaveUp += 1 }
    }
}
