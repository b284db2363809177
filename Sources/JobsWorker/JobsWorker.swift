import FinchAPI
import Foundation
import Kafka
import Logging
import ServiceLifecycle

/// The worker as a service: consumes input events as a consumer-group member, answers each
/// through the deduplicator and Finch, publishes results, and commits offsets only behind
/// answered events. Graceful shutdown stops fetching, drains within the shutdown timeout,
/// commits and leaves the group.
public final class JobsWorker: Service, Sendable {
    public let configuration: WorkerConfiguration
    private let logger: Logger
    private let metrics: WorkerMetrics
    private let driver = Locked<WorkerDriver?>(nil)
    private let testHooks = Locked<TestHooks>(TestHooks())

    /// Handles a test can use to cause faults from inside the worker.
    package struct TestHooks: Sendable {
        package var producer: KafkaProducer?
        package var consumer: KafkaConsumer?
    }

    /// - Throws: ``WorkerConfigurationError`` (one sentence naming the option).
    public init(configuration: WorkerConfiguration, logger: Logger, metrics: WorkerMetrics = WorkerMetrics()) throws(WorkerConfigurationError) {
        try configuration.validate()
        self.configuration = configuration
        self.logger = logger
        self.metrics = metrics
    }

    /// Ready once the group assigned this member its partitions (possibly none), until
    /// shutdown begins or Kafka refuses a publication for good.
    public var isReady: Bool { driver.value?.isReady ?? false }

    /// ``isReady`` as it changes, for tasks that wait for the worker to be ready.
    public let readiness = Watched(false)

    /// Events admitted and not yet answered.
    package var unanswered: Int { driver.value?.unanswered ?? 0 }
    /// Connections Finch said need re-authentication.
    package var reauthenticationRequired: Set<String> { driver.value?.reauthenticationRequired ?? [] }

    package var hooks: TestHooks { testHooks.value }

    public func run() async throws {
        let configuration = self.configuration
        let tokens: TokenStore
        do {
            tokens = try TokenStore(path: configuration.tokensFile, logger: logger)
        } catch {
            throw WorkerConfigurationError("--tokens-file: \(error).")
        }
        metrics.prepare(inputTopics: configuration.inputTopics)
        let finch = try FinchClient(configuration: configuration.finchClient, logger: logger)
        do {
            try await run(finch: finch, tokens: tokens)
        } catch {
            // Every way out shuts the HTTP client down (it must not be dropped running).
            try? await finch.shutdown()
            throw error
        }
    }

    private func run(finch: FinchClient, tokens: TokenStore) async throws {
        let configuration = self.configuration
        let client = KafkaClientConfiguration(
            bootstrapServers: configuration.bootstrapServers,
            clientID: KafkaClientConfiguration.uniqueClientID(prefix: "finch-jobs"),
            properties: configuration.kafkaProperties,
            statisticsInterval: configuration.statisticsInterval
        )
        // Stops the worker: SIGTERM, or a publication Kafka refused for good.
        let (stopRequests, requestStop) = AsyncStream.makeStream(of: Void.self)
        let failure = Locked<String?>(nil)
        let fail: @Sendable (String) -> Void = { reason in
            failure.withLock { if $0 == nil { $0 = reason } }
            requestStop.yield()
        }
        // Only the consumer's statistics are read (for lag).
        var producerClient = client
        producerClient.statisticsInterval = nil
        let producer = try KafkaProducer(configuration: KafkaProducerConfiguration(client: producerClient, linger: .milliseconds(1)), logger: logger) { error in
            fail("the Kafka producer hit a fatal error: \(error)")
        }
        // First-use costs of the event, result and Finch paths, paid before the first event.
        FinchClient.warmUp()
        _ = EventDecoder(maxEventBytes: configuration.maxEventBytes).decode(Array(#"{"type":"employee.w4.changed","event_id":"e","connection_id":"c","individual_id":"i","changed_at":"2026-01-01T00:00:00Z"}"#.utf8))
        _ = JobResult(key: JobKey(connectionID: "c", individualID: nil), eventIDs: ["e"], answer: .reused(FinchJobReference(jobID: "j", jobURL: nil)), decidedBy: .reuseWindow, attempts: 0, at: Date())
            .record(topic: configuration.resultsTopic, source: configuration.resultSource)
        // Output topics' metadata first, so the first result is not held for librdkafka's
        // 1 s metadata timer; the group is joined (and readiness reached) only after.
        for (topic, error) in await producer.warmUp(topics: [configuration.resultsTopic, configuration.deadLetterTopic, configuration.decisionsTopic]) {
            logger.warning("output topic not ready at startup; its first records may wait for Kafka's metadata", metadata: ["topic": "\(topic)", "error": "\(error)"])
        }
        // The input topics' partition count: the denominator of this replica's call budget share.
        let partitionTotal = await Self.inputPartitions(producer: producer, topics: configuration.inputTopics + [configuration.webhooksTopic], logger: logger)
        // The webhooks topic's partitions: which replica polls a connection's jobs.
        let webhookPartitions: Int
        switch await producer.partitionCounts(topics: [configuration.webhooksTopic], timeout: .seconds(10))[configuration.webhooksTopic] {
        case .success(let count)?:
            webhookPartitions = count
        case .failure(let error)?:
            producer.close()
            throw WorkerFailure(reason: "the webhooks topic \(configuration.webhooksTopic) cannot be read (\(error)); create it, or name another with --webhooks-topic")
        case nil:
            producer.close()
            throw WorkerFailure(reason: "the webhooks topic \(configuration.webhooksTopic) cannot be read; create it, or name another with --webhooks-topic")
        }
        // The decision log, read to its end before joining the group, so this replica is
        // ready only with the group's memory.
        let decisionLog: KafkaLogReader
        let restoredRecords: [KafkaRecord]
        do {
            (decisionLog, restoredRecords) = try await Self.readDecisionLog(client: client, topic: configuration.decisionsTopic, logger: logger)
        } catch {
            producer.close()
            throw error
        }
        let metrics = self.metrics
        let consumer: KafkaConsumer
        do {
            var consumerConfiguration = KafkaConsumerConfiguration(
                client: client, groupID: configuration.groupID, topics: configuration.inputTopics + [configuration.webhooksTopic],
                maxBatchSize: configuration.maxBatchSize, rebalanceTimeout: configuration.revokeTimeout + .seconds(5)
            )
            consumerConfiguration.groupInstanceID = configuration.instanceID
            consumer = try KafkaConsumer(
                configuration: consumerConfiguration,
                logger: logger,
                onStatistics: { metrics.consumerLag($0.consumerLag) },
                onOffsetReset: { metrics.offsetReset($0.topicPartition) }
            )
        } catch {
            decisionLog.close()
            producer.close()
            throw error
        }
        testHooks.withLock { $0 = TestHooks(producer: producer, consumer: consumer) }
        let (jobs, jobQueue) = AsyncStream.makeStream(of: (@Sendable () async -> Void).self)
        let driver = WorkerDriver(
            configuration: configuration, producer: producer, consumer: consumer, finch: finch, tokens: tokens,
            metrics: metrics, logger: logger, jobs: jobQueue, webhookPartitions: webhookPartitions, readiness: readiness, onFailure: fail
        )
        self.driver.withLock { $0 = driver }
        if let partitionTotal { driver.setPartitionTotal(partitionTotal) }
        let skipped = driver.restore(restoredRecords, startup: true)
        if skipped > 0 {
            logger.warning("unreadable records in the decision log were skipped", metadata: ["skipped": "\(skipped)", "topic": "\(configuration.decisionsTopic)"])
        }
        logger.info("worker starting", metadata: [
            "group": "\(configuration.groupID)", "input_topics": "\(configuration.inputTopics)",
            "connections_with_tokens": "\(tokens.count)", "finch_base_url": "\(configuration.finchBaseURL)",
            "allocator": "\(Allocator.kind)",
        ])

        var fatal: KafkaError?
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                group.addTask { await Self.housekeeping(driver: driver, tokens: tokens, metrics: metrics, interval: configuration.tokensReloadInterval) }
                // Other replicas' decisions, as they are written.
                group.addTask {
                    for await event in decisionLog.events {
                        switch event {
                        case .records(let records): driver.restore(records, startup: false)
                        case .caughtUp: break
                        case .error(let error): self.logger.warning("decision log read error", metadata: ["error": "\(error)"])
                        }
                    }
                }
                // Partitions added to the input topics change every replica's share.
                group.addTask {
                    while (try? await Task.sleep(for: .seconds(30))) != nil {
                        if let total = await Self.inputPartitions(producer: producer, topics: configuration.inputTopics + [configuration.webhooksTopic], logger: self.logger) {
                            driver.setPartitionTotal(total)
                        }
                        metrics.decisionLogLag(decisionLog.lag)
                    }
                }
                // Finch calls and delayed republications; cancelled with the group.
                group.addTask {
                    await withDiscardingTaskGroup { work in
                        for await job in jobs { work.addTask { await job() } }
                    }
                }
                group.addTask {
                    for await _ in stopRequests { break }
                    guard !Task.isCancelled else { return }
                    await Self.stop(driver: driver, producer: producer, consumer: consumer, timeout: configuration.shutdownTimeout, logger: self.logger)
                }
                for await event in consumer.events {
                    switch event {
                    case .records(let records):
                        driver.admit(records)
                    case .assigned(let partitions):
                        driver.assign(partitions)
                    case .revoked(let partitions, let acknowledgement):
                        await driver.revoke(partitions)
                        acknowledgement.acknowledge()
                    case .lost(let partitions, let acknowledgement):
                        driver.lose(partitions)
                        acknowledgement.acknowledge()
                    case .error(let error):
                        if error.code == .fatal { fatal = error }
                    }
                }
                // The consumer has closed (shutdown or a fatal error): stop what is left.
                driver.consumerClosed()
                group.cancelAll()
            }
        } onGracefulShutdown: {
            requestStop.yield()
        }
        requestStop.finish()
        jobQueue.finish()
        decisionLog.close()
        producer.close(timeout: .seconds(1))
        try? await finch.shutdown()
        driver.limiter.close()
        if let fatal {
            if fatal.isFencedInstance, let instanceID = configuration.instanceID {
                let reason = "another replica joined the group with the same --instance-id \(instanceID); this one was fenced and stops (give every replica its own id)"
                logger.critical("worker stopped: fenced", metadata: ["instance_id": "\(instanceID)", "error": "\(fatal)"])
                throw WorkerFailure(reason: reason)
            }
            logger.critical("worker stopped on a fatal Kafka error", metadata: ["error": "\(fatal)"])
            throw fatal
        }
        if let reason = failure.value {
            throw WorkerFailure(reason: reason)
        }
        logger.info("worker stopped")
    }

    /// How many partitions the input topics have in all (the denominator of this replica's
    /// share of the call budget), or `nil` when the metadata cannot be read now.
    private static func inputPartitions(producer: KafkaProducer, topics: [String], logger: Logger) async -> Int? {
        var total = 0
        for (topic, count) in await producer.partitionCounts(topics: topics, timeout: .seconds(5)) {
            switch count {
            case .success(let count):
                total += count
            case .failure(let error):
                logger.warning("input topic's partition count unknown; the call budget share keeps the last known count", metadata: ["topic": "\(topic)", "error": "\(error)"])
                return nil
            }
        }
        return total
    }

    /// The shortest fetch wait of the decision log reader, in milliseconds.
    static let decisionLogMinimumFetchWaitMs = 10

    /// The decision log reader's client: the worker's, without statistics, and waiting at
    /// least ``decisionLogMinimumFetchWaitMs`` per fetch. Other replicas' decisions are as
    /// useful 10 ms later as 2 ms later, and a broker that holds an empty fetch for the whole
    /// wait (librdkafka's mock cluster) otherwise costs both sides CPU for every fetch of an
    /// idle log (4 % of the worker's CPU in the stream benchmark, at 2 ms).
    static func decisionLogClient(_ client: KafkaClientConfiguration) -> KafkaClientConfiguration {
        var reader = client
        reader.statisticsInterval = nil
        if let wait = reader.properties["fetch.wait.max.ms"].flatMap(Int.init), wait < decisionLogMinimumFetchWaitMs {
            reader.properties["fetch.wait.max.ms"] = "\(decisionLogMinimumFetchWaitMs)"
        }
        return reader
    }

    /// Reads the decision log to its end. Returns the reader (which goes on following the log)
    /// and the records read.
    private static func readDecisionLog(client: KafkaClientConfiguration, topic: String, logger: Logger) async throws -> (KafkaLogReader, [KafkaRecord]) {
        let started = ContinuousClock.now
        let reader: KafkaLogReader
        do {
            reader = try KafkaLogReader(client: decisionLogClient(client), topic: topic, logger: logger)
        } catch {
            throw WorkerFailure(reason: "the decision log \(topic) cannot be read (\(error)); create it with cleanup.policy=compact, or name another with --decisions-topic")
        }
        // Bounded: a log that cannot be read to its end (a missing read ACL, a partition
        // without a leader) stops the start with a sentence instead of hanging it.
        let limit: Duration = .seconds(300)
        let timer = Task {
            guard (try? await Task.sleep(for: limit)) != nil else { return }
            reader.close()
        }
        defer { timer.cancel() }
        var records: [KafkaRecord] = []
        var caughtUp = false
        reading: for await event in reader.events {
            switch event {
            case .records(let batch): records += batch
            case .caughtUp:
                caughtUp = true
                break reading
            case .error(let error): logger.warning("decision log read error", metadata: ["error": "\(error)"])
            }
        }
        if Task.isCancelled {
            reader.close()
            throw CancellationError()
        }
        guard caughtUp else {
            reader.close()
            throw WorkerFailure(reason: "the decision log \(topic) was not read to its end within \(DurationText.format(limit)); check that this replica may read it")
        }
        logger.info("decision log read", metadata: [
            "topic": "\(topic)", "records": "\(records.count)", "partitions": "\(reader.partitionCount)",
            "seconds": "\(String(format: "%.3f", (ContinuousClock.now - started).timeInterval))",
        ])
        return (reader, records)
    }

    /// The whole stop within `timeout`: stop fetching and drain (three quarters of it at
    /// most), flush results so their offsets are stored, commit, then leave the group.
    private static func stop(driver: WorkerDriver, producer: KafkaProducer, consumer: KafkaConsumer, timeout: Duration, logger: Logger) async {
        let start = ContinuousClock.now
        let deadline = start + timeout
        let reserve = min(timeout / 4, .seconds(5))
        await driver.drain(until: deadline - reserve)
        // Results produced but not yet acknowledged: their acknowledgements store offsets.
        if !producer.flush(timeout: max(.zero, (deadline - ContinuousClock.now) / 3)) {
            logger.warning("shutdown: some results were not acknowledged by Kafka in time; their events stay uncommitted")
        }
        // Commit now, while still a member in good standing; leaving commits again, but a
        // coordinator in the middle of a rebalance (other replicas stopping too) may refuse it.
        do {
            try await withDeadline(deadline) { try await consumer.commitStoredOffsets() }
        } catch {
            logger.warning("commit at shutdown failed; leaving the group commits again", metadata: ["error": "\(error)"])
        }
        let closed: Void? = try? await withDeadline(deadline) { await consumer.close() }
        if closed == nil {
            logger.error("shutdown timeout: the Kafka consumer did not close in time; leaving anyway")
            consumer.abandonEvents()
        }
    }

    private static func housekeeping(driver: WorkerDriver, tokens: TokenStore, metrics: WorkerMetrics, interval: Duration) async {
        var lastTrim = ContinuousClock.now
        while !Task.isCancelled {
            do {
                try await Task.sleep(for: interval)
            } catch {
                return
            }
            switch tokens.reloadIfChanged() {
            case true?: metrics.tokenReload(outcome: "reloaded")
            case nil: metrics.tokenReload(outcome: "failed")
            case false?: break
            }
            driver.tick()
            // Every 10 s, give memory freed since back to the system, so a burst does not
            // leave the resident size at its peak.
            if ContinuousClock.now - lastTrim >= .seconds(10) {
                Allocator.returnFreeMemory()
                lastTrim = ContinuousClock.now
            }
        }
    }
}

/// The worker stopped because Kafka refused a publication for good (or the producer hit a
/// fatal error): the process should exit non-zero so that its orchestrator restarts it.
public struct WorkerFailure: Error, CustomStringConvertible, Sendable {
    public let reason: String
    public var description: String { "the worker stopped: \(reason)" }
}

/// Runs `body` until it returns or `deadline` passes (then `body` is cancelled).
/// - Returns: `body`'s value, or `nil` when the deadline came first.
func withDeadline<T: Sendable>(_ deadline: ContinuousClock.Instant, _ body: @escaping @Sendable () async throws -> T) async throws -> T? {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try? await Task.sleep(until: deadline)
            return nil
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}
