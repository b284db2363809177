extension JobResult {
    /// The result as JSON with sorted keys and unescaped slashes, byte for byte what
    /// `JSONEncoder` (`.sortedKeys`, `.withoutEscapingSlashes`) writes, without its cost:
    /// encoding results was the worker's second-largest CPU cost after decoding events.
    package var json: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(320 + eventIDs.reduce(0) { $0 + $1.utf8.count + 3 })
        var first = true
        func key(_ name: StaticString) {
            out.append(first ? UInt8(ascii: "{") : UInt8(ascii: ","))
            first = false
            out.append(UInt8(ascii: "\""))
            out.append(contentsOf: UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
            out.append(contentsOf: [UInt8(ascii: "\""), UInt8(ascii: ":")])
        }
        func string(_ name: StaticString, _ value: String?) {
            guard let value else { return }
            key(name)
            JSONText.appendString(value, to: &out)
        }
        func integer(_ name: StaticString, _ value: Int?) {
            guard let value else { return }
            key(name)
            out.append(contentsOf: String(value).utf8)
        }
        // Keys in sorted order, as `.sortedKeys` writes them.
        integer("allowed_refreshes", allowedRefreshes)
        integer("attempts", attempts)
        string("connection_id", connectionID)
        string("decided_by", decidedBy)
        if let error {
            key("error")
            out.append(contentsOf: Array(#"{"code":"#.utf8))
            JSONText.appendString(error.code, to: &out)
            out.append(contentsOf: Array(#","message":"#.utf8))
            JSONText.appendString(error.message, to: &out)
            out.append(UInt8(ascii: "}"))
        }
        key("event_ids")
        out.append(UInt8(ascii: "["))
        for (index, id) in eventIDs.enumerated() {
            if index > 0 { out.append(UInt8(ascii: ",")) }
            JSONText.appendString(id, to: &out)
        }
        out.append(UInt8(ascii: "]"))
        string("finch_request_id", finchRequestID)
        integer("finch_status", finchStatus)
        string("individual_id", individualID)
        string("job_id", jobID)
        string("job_type", jobType)
        string("job_url", jobURL)
        string("occurred_at", occurredAt)
        integer("remaining_refreshes", remainingRefreshes)
        string("result_id", resultID)
        string("retry_at", retryAt)
        string("type", type)
        out.append(UInt8(ascii: "}"))
        return out
    }
}
