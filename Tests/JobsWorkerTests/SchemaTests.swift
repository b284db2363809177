import FinchAPI
import Foundation
import JobsWorker
import Kafka
import TestSupport
import Testing

@Suite("schemas/ and the Swift types agree")
struct SchemaTests {
    func example(_ name: String) throws -> Data {
        try Data(contentsOf: SchemaValidator.schemasDirectory.appendingPathComponent("examples/\(name)"))
    }

    @Test("The example events validate and decode")
    func events() throws {
        let decoder = EventDecoder()
        for (schema, file) in [("refresh-requested.v1.json", "refresh-requested.json"), ("employee-w4-changed.v1.json", "employee-w4-changed.json")] {
            let data = try example(file)
            #expect(try SchemaValidator(schema: schema).validate(data) == [], "\(file)")
            #expect((try? decoder.decode(Array(data)).get()) != nil, "\(file) decodes")
        }
    }

    @Test("The example results validate and decode into JobResult", arguments: ["created", "reused", "rate-limited", "failed"])
    func resultExamples(kind: String) throws {
        let data = try example("job-result.\(kind).json")
        #expect(try SchemaValidator(schema: "job-result.v1.json").validate(data) == [])
        _ = try JSONDecoder().decode(JobResult.self, from: data)
    }

    @Test("Results the worker builds validate, for every answer and decider")
    func builtResults() throws {
        let validator = try SchemaValidator(schema: "job-result.v1.json")
        let job = FinchJobReference(jobID: "j-1", jobURL: "http://127.0.0.1/jobs/automated/j-1")
        let finch = FinchEnqueueResult(outcome: .created(job), status: 201, requestID: "r-1", allowedRefreshes: 1, remainingRefreshes: 0)
        let answers: [(JobAnswer, DecidedBy, FinchEnqueueResult?)] = [
            (.created(job), .finch, finch),
            (.reused(job), .inFlight, nil),
            (.reused(job), .reuseWindow, nil),
            (.rateLimited(retryAt: Date(), lastJob: job), .rateLimitMemory, nil),
            (.rateLimited(retryAt: Date(), lastJob: nil), .finch, FinchEnqueueResult(outcome: .rateLimited(retryAt: Date(), lastJob: nil), status: 429, requestID: "r-2")),
            (.failed(.noAccessToken, message: "none"), .local, nil),
            (.created(job), .finch, FinchEnqueueResult(outcome: .created(job), status: 201, requestID: nil, allowedRefreshes: 1, remainingRefreshes: 0)),
        ]
        for key in [JobKey(connectionID: "c-1", individualID: nil), JobKey(connectionID: "c-1", individualID: "i-9")] {
            for (answer, decidedBy, finch) in answers {
                let result = JobResult(key: key, eventIDs: ["e-1"], answer: answer, decidedBy: decidedBy, finch: finch, attempts: finch == nil ? 0 : 1, at: Date())
                let record = result.record(topic: "finch.job-results", source: "finch-jobs")
                #expect(validator.validate(Data(record.value ?? [])) == [], "\(answer) \(decidedBy)")
                #expect(record.key == Array("c-1".utf8))
                let headers = Dictionary(uniqueKeysWithValues: record.headers.map { ($0.key, $0.stringValue ?? "") })
                #expect(headers["ce_specversion"] == "1.0" && headers["ce_id"] == result.resultID && headers["ce_type"] == result.type)
                #expect(headers["ce_subject"] == "c-1" && headers["content-type"] == "application/json" && headers["ce_time"] == result.occurredAt)
            }
        }
    }

    @Test("The validator rejects what the schema forbids")
    func rejects() throws {
        let validator = try SchemaValidator(schema: "job-result.v1.json")
        let created = try JSONSerialization.jsonObject(with: try example("job-result.created.json")) as! [String: Any]
        var missingJob = created
        missingJob["job_id"] = nil
        #expect(!validator.validate(missingJob).isEmpty)
        var badType = created
        badType["type"] = "job.maybe"
        #expect(!validator.validate(badType).isEmpty)
        var extra = created
        extra["token"] = "secret"
        #expect(!validator.validate(extra).isEmpty)
    }

    @Test("Dead-letter headers validate; the original key, bytes and headers are kept")
    func deadLetters() throws {
        let validator = try SchemaValidator(schema: "dead-letter-headers.v1.json")
        #expect(validator.validate(try example("dead-letter-headers.json")) == [])
        let original = KafkaRecord(topic: "finch.refresh-requested", partition: 2, offset: 41, key: Array("c-1".utf8), value: [0xFF, 0x00],
                                   headers: [KafkaHeader(key: "trace", string: "abc")], timestampMilliseconds: 1_795_917_600_000)
        let record = DeadLetter.record(for: original, reason: DeadLetterReason(.invalidUTF8, message: "the value is not valid UTF-8"), topic: "finch.dead-letter")
        #expect(record.key == original.key && record.value == original.value)
        #expect(record.headers.first == KafkaHeader(key: "trace", string: "abc"))
        let added = Dictionary(record.headers.dropFirst().map { ($0.key, $0.stringValue ?? "") }, uniquingKeysWith: { a, _ in a })
        #expect(validator.validate(added) == [])
        #expect(added["finch-jobs.original.offset"] == "41")
    }
}

@Suite("Result JSON")
struct ResultJSONTests {
    @Test("The result writer produces exactly what JSONEncoder with sorted keys does, escapes included")
    func sameBytesAsJSONEncoder() throws {
        let job = FinchJobReference(jobID: "453bd7d7-5355-4d6d-a38e-d9e7eb218c3f", jobURL: "https://api.tryfinch.com/jobs/automated/453bd7d7")
        let finch = FinchEnqueueResult(outcome: .created(job), status: 201, requestID: "r/1", allowedRefreshes: 1, remainingRefreshes: 0)
        let keys = [JobKey(connectionID: "c-1", individualID: nil), JobKey(connectionID: "c \"quoted\" \\ é 😀", individualID: "i\u{1}\n\t/\u{7f}")]
        let answers: [(JobAnswer, DecidedBy, FinchEnqueueResult?)] = [
            (.created(job), .finch, finch), (.reused(job), .inFlight, nil),
            (.rateLimited(retryAt: Date(timeIntervalSince1970: 1_795_917_600.25), lastJob: job), .rateLimitMemory, nil),
            (.rateLimited(retryAt: Date(timeIntervalSince1970: 1_795_917_600), lastJob: nil), .finch, FinchEnqueueResult(outcome: .rateLimited(retryAt: Date(), lastJob: nil), status: 429, requestID: nil)),
            (.failed(.noAccessToken, message: "no token for \"c\"\r\n\u{0}"), .local, nil),
        ]
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        for key in keys {
            for (answer, decidedBy, finch) in answers {
                let result = JobResult(key: key, eventIDs: ["e-1", "e/\"2\"", "é"], answer: answer, decidedBy: decidedBy, finch: finch, attempts: 1, at: Date())
                let expected = try encoder.encode(result)
                #expect(String(decoding: result.json, as: UTF8.self) == String(decoding: expected, as: UTF8.self))
            }
        }
    }
}
