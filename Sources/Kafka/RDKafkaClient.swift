import CRdKafka
import Foundation
import Logging

/// Owns one `rd_kafka_t` and the context its C callbacks reach through `rd_kafka_opaque`.
///
/// - Important: `@unchecked Sendable` because librdkafka documents `rd_kafka_t` as thread-safe
///   and the pointer never changes; `destroy()` must be called exactly once, by the owner.
final class RDKafkaClient: @unchecked Sendable {
    let pointer: OpaquePointer
    let context: ClientContext

    /// Creates the client. The configuration is consumed on success and destroyed on failure
    /// (`rd_kafka_new` takes ownership of it only when it succeeds).
    init(
        type: rd_kafka_type_t,
        properties: [(String, String)],
        context: ClientContext,
        logsToMainQueue: Bool = true,
        configure: (OpaquePointer) -> Void = { _ in }
    ) throws(KafkaError) {
        let conf = try RDKafkaClient.makeConf(properties + [("log_level", context.librdkafkaLogLevel)])
        rd_kafka_conf_set_opaque(conf, Unmanaged.passUnretained(context).toOpaque())
        rd_kafka_conf_set_log_cb(conf) { rk, level, facility, message in
            guard let rk, let opaque = rd_kafka_opaque(rk) else { return }
            let context = Unmanaged<ClientContext>.fromOpaque(opaque).takeUnretainedValue()
            context.log(level: level, facility: facility.map { String(cString: $0) } ?? "", message: message.map { String(cString: $0) } ?? "")
        }
        rd_kafka_conf_set_error_cb(conf) { _, err, reason, opaque in
            guard let opaque else { return }
            let context = Unmanaged<ClientContext>.fromOpaque(opaque).takeUnretainedValue()
            context.error(code: rd_kafka_resp_err_t(err), reason: reason.map { String(cString: $0) } ?? "")
        }
        rd_kafka_conf_set_stats_cb(conf) { _, json, length, opaque in
            guard let opaque, let json else { return 0 }
            let context = Unmanaged<ClientContext>.fromOpaque(opaque).takeUnretainedValue()
            let bytes = UnsafeRawBufferPointer(start: json, count: length)
            context.statistics(Data(bytes))
            return 0  // librdkafka frees the JSON
        }
        configure(conf)

        var errstr = [CChar](repeating: 0, count: 512)
        guard let rk = rd_kafka_new(type, conf, &errstr, errstr.count) else {
            rd_kafka_conf_destroy(conf)
            throw KafkaError(code: .clientCreation, message: String(errorBuffer: errstr))
        }
        self.pointer = rk
        self.context = context
        // Route librdkafka's logs to the main queue so they are served by our poll thread
        // (log.queue=true) instead of being logged from librdkafka's internal threads.
        if logsToMainQueue {
            rd_kafka_set_log_queue(rk, nil)
        }
    }

    func destroy() {
        rd_kafka_destroy(pointer)
    }

    /// Destroys a consumer without the group leave that `rd_kafka_destroy` performs: after a
    /// fatal error that leave never completes and `rd_kafka_destroy` hangs (seen on 2.0.2).
    func destroyWithoutLeaving() {
        rd_kafka_destroy_flags(pointer, Int32(RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE))
    }

    /// The fatal error librdkafka raised, if any.
    func fatalError() -> KafkaError? {
        var errstr = [CChar](repeating: 0, count: 512)
        let err = rd_kafka_fatal_error(pointer, &errstr, errstr.count)
        guard err != RD_KAFKA_RESP_ERR_NO_ERROR else { return nil }
        return KafkaError(code: .fatal, message: String(errorBuffer: errstr), rdKafkaCode: err.rawValue)
    }

    /// Builds a librdkafka configuration.
    /// - Throws: ``KafkaError`` `configuration` naming the rejected property and why, never
    ///   its value (values are often secrets: `sasl.password`, `ssl.key.password`).
    static func makeConf(_ properties: [(String, String)]) throws(KafkaError) -> OpaquePointer {
        let conf = rd_kafka_conf_new()!
        var errstr = [CChar](repeating: 0, count: 512)
        for (key, value) in properties {
            if rd_kafka_conf_set(conf, key, value, &errstr, errstr.count) != RD_KAFKA_CONF_OK {
                rd_kafka_conf_destroy(conf)
                var reason = String(errorBuffer: errstr)
                if !value.isEmpty { reason = reason.replacingOccurrences(of: value, with: "…") }
                throw KafkaError(code: .configuration, message: "\(key) rejected by librdkafka: \(reason)")
            }
        }
        return conf
    }
}

/// What librdkafka's C callbacks reach: the logger and the application's handlers.
///
/// - Important: callbacks reach it through `rd_kafka_opaque`, on librdkafka's threads and
///   on our poll threads; every stored property is immutable and Sendable.
final class ClientContext: Sendable {
    let logger: Logger
    let onError: @Sendable (KafkaError) -> Void
    let onStatistics: @Sendable (KafkaStatistics) -> Void
    let onOffsetReset: @Sendable (KafkaOffsetReset) -> Void
    /// Set for consumers: handles the rebalance callback on the poll thread.
    let rebalance: ConsumerRebalancer?

    init(
        logger: Logger,
        rebalance: ConsumerRebalancer? = nil,
        onError: @escaping @Sendable (KafkaError) -> Void = { _ in },
        onStatistics: @escaping @Sendable (KafkaStatistics) -> Void = { _ in },
        onOffsetReset: @escaping @Sendable (KafkaOffsetReset) -> Void = { _ in }
    ) {
        self.logger = logger
        self.rebalance = rebalance
        self.onError = onError
        self.onStatistics = onStatistics
        self.onOffsetReset = onOffsetReset
    }

    /// librdkafka's `log_level` (syslog levels) matching the logger, so librdkafka does not
    /// format messages nobody reads. Never below warning: offset resets are detected from
    /// librdkafka's warning-level `OFFSET` lines.
    var librdkafkaLogLevel: String {
        switch logger.logLevel {
        case .trace, .debug: "7"
        case .info: "6"
        case .notice: "5"
        case .warning, .error, .critical: "4"
        }
    }

    func log(level: Int32, facility: String, message: String) {
        let swiftLevel: Logger.Level = switch level {
        case ...2: .critical
        case 3: .error
        case 4: .warning
        case 5: .notice
        case 6: .info
        default: .debug
        }
        // librdkafka logs a reset caused by an error (typically retention overtaking the
        // consumer: "offset reset (at offset N, broker B) to BEGINNING: ... Offset out of
        // range") at warning level with facility OFFSET (rdkafka_offset.c); resets for
        // partitions without a committed offset are debug-only.
        if facility == "OFFSET", level <= 4, let reset = KafkaOffsetReset(logLine: message) {
            logger.error("consumer offset reset: records were skipped", metadata: [
                "topic": "\(reset.topicPartition.topic)", "partition": "\(reset.topicPartition.partition)",
                "librdkafka.message": "\(message)",
            ], source: "librdkafka")
            onOffsetReset(reset)
            return
        }
        // One property list serves both clients, so librdkafka notes that a consumer property
        // is ignored by the producer (and the reverse): expected, not worth a warning.
        let level = facility == "CONFWARN" && message.contains("will be ignored by this") ? .debug : swiftLevel
        logger.log(level: level, "\(message)", metadata: ["librdkafka.facility": "\(facility)"], source: "librdkafka")
    }

    func error(code: rd_kafka_resp_err_t, reason: String) {
        let error = KafkaError(
            code: code == RD_KAFKA_RESP_ERR__FATAL ? .fatal : .consumer,
            message: reason,
            rdKafkaCode: code.rawValue
        )
        // Transport errors to a broker that is down are retried by librdkafka; only the
        // "all brokers down" and fatal cases deserve an error-level line.
        let level: Logger.Level =
            (code == RD_KAFKA_RESP_ERR__FATAL || code == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) ? .error : .warning
        logger.log(level: level, "librdkafka error", metadata: ["error": "\(error)"], source: "librdkafka")
        onError(error)
    }

    /// Parses a statistics report away from the poll thread: the JSON grows with partitions
    /// and brokers, and parsing it on the poll thread delayed everything that thread serves
    /// (delivery reports, records) for as long.
    func statistics(_ json: Data) {
        let onStatistics = self.onStatistics
        Self.statisticsQueue.async {
            if let statistics = KafkaStatistics(json: json) {
                onStatistics(statistics)
            }
        }
    }

    private static let statisticsQueue = DispatchQueue(label: "finch-jobs.kafka.statistics", qos: .utility)
}

extension String {
    /// Reads a NUL-terminated `errstr` buffer filled by librdkafka.
    init(errorBuffer: [CChar]) {
        self = errorBuffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }
}
