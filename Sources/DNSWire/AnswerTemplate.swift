import NIOCore

/// One answer (a record set plus its glue) encoded ahead of time as one chunk of bytes per instance, so that
/// answering a query means copying chunks in rotated order and patching a few pointers.
///
/// The bytes are exactly what `MessageWriter` would write for the same records after the same question:
/// - every answer record's owner is the question, so it starts with the pointer C0 0C;
/// - an SRV target is written without compression, and its glue record's owner points back at the first SRV
///   target with that name, which depends on the rotation, so that pointer is patched while copying;
/// - duplicate records (two instances on one address) are written once, at their first position in the
///   rotated order, as the general encoder's deduplication does.
/// The counts and the total size do not depend on the rotation, so they are known before a byte is written.
public final class AnswerTemplate: Sendable {
    struct Chunk: Sendable {
        var start: Int32
        var end: Int32
        /// The first instance whose record is the same; only that group's first occurrence is written.
        var group: Int32
        var isEmpty: Bool { start == end }
    }

    let bytes: [UInt8]
    let answers: [Chunk]
    let glue: [Chunk]
    /// Per instance: the first instance whose SRV target has the same name (where the glue owner points).
    let targetGroup: [Int32]
    let dedupeAnswers: Bool
    public let answerCount: UInt16
    public let glueCount: UInt16
    /// Bytes after the question, without an OPT record.
    public let bodySize: Int

    /// Offset of the SRV target inside an answer record: owner pointer, type/class/TTL/length, priority/weight/port.
    static let srvTargetOffset = 2 + 10 + 6

    /// One instance's records: its answer record (nil: nothing of the asked type) and the glue for it.
    public struct Entry {
        public var answer: ResourceRecord?
        public var glue: ResourceRecord?
        public init(answer: ResourceRecord?, glue: ResourceRecord?) {
            self.answer = answer
            self.glue = glue
        }
    }

    /// Encodes `entries` (in base order) as answers to `question`; every answer's owner must be the question name.
    /// `dedupeAnswers` drops repeated answer records (A/AAAA); SRV answers are all kept, their glue deduplicated.
    /// Returns nil when the shape is not one this template can reproduce byte for byte.
    public init?(question: Question, entries: [Entry], dedupeAnswers: Bool) {
        var b = Builder(question: question, dedupeAnswers: dedupeAnswers)
        for (i, entry) in entries.enumerated() {
            guard b.add(entry, index: i) else { return nil }
        }
        // Pointers reach 0x3FFF at most; keep well inside that with the longest question.
        guard b.answerCount > 0, b.bodySize + DNSHeader.size + DNSName.maxWireLength + 4 < 0x3FFF else { return nil }
        self.bytes = b.bytes
        self.answers = b.answers
        self.glue = b.glue
        self.targetGroup = b.targetGroup
        self.dedupeAnswers = dedupeAnswers
        self.answerCount = UInt16(b.answerCount)
        self.glueCount = UInt16(b.glueCount)
        self.bodySize = b.bodySize
    }

    /// The template's parts as the entries are encoded one by one.
    private struct Builder {
        let question: Question
        let dedupeAnswers: Bool
        var bytes: [UInt8] = []
        var answers: [Chunk] = []
        var glue: [Chunk] = []
        var targetGroup: [Int32] = []
        var answerCount = 0, glueCount = 0, bodySize = 0
        // The first instance with each answer record, glue record and SRV target name.
        var firstAnswer: [ResourceRecord: Int] = [:], firstGlue: [ResourceRecord: Int] = [:], firstTarget: [DNSName: Int] = [:]

        init(question: Question, dedupeAnswers: Bool) { (self.question, self.dedupeAnswers) = (question, dedupeAnswers) }

        /// Encodes one entry after the question; false when its shape is not one a template can reproduce.
        mutating func add(_ entry: Entry, index i: Int) -> Bool {
            var w = MessageWriter(buffer: ByteBuffer())
            w.writeQuestion(question)
            let body = w.size
            var answerChunk = Chunk(start: Int32(bytes.count), end: Int32(bytes.count), group: Int32(i))
            if let rr = entry.answer {
                guard rr.name == question.name else { return false }
                w.writeRecord(rr, section: .answer)
                let encoded = w.buffer.getBytes(at: body, length: w.size - body)!
                guard encoded.count >= 2, encoded[0] == 0xC0, encoded[1] == 0x0C else { return false }
                answerChunk.end = Int32(bytes.count + encoded.count)
                let first = dedupeAnswers ? firstAnswer[rr] : nil
                answerChunk.group = keep(encoded, first: first, index: i)
                if first == nil { firstAnswer[rr] = i; answerCount += 1 }
            }
            answers.append(answerChunk)
            var glueChunk = Chunk(start: Int32(bytes.count), end: Int32(bytes.count), group: Int32(i))
            if let rr = entry.glue {
                guard let answer = entry.answer, case .srv(_, _, _, let name) = answer.rdata, rr.name == name else { return false }
                let mark = w.size
                w.writeRecord(rr, section: .additional)
                let encoded = w.buffer.getBytes(at: mark, length: w.size - mark)!
                // The owner must be a single pointer to the target just written.
                guard encoded.count >= 2, encoded[0] & 0xC0 == 0xC0,
                      Int(UInt16(encoded[0] & 0x3F) << 8 | UInt16(encoded[1])) == body + AnswerTemplate.srvTargetOffset else { return false }
                glueChunk.end = Int32(bytes.count + encoded.count)
                let first = firstGlue[rr]
                glueChunk.group = keep(encoded, first: first, index: i)
                if first == nil { firstGlue[rr] = i; glueCount += 1 }
            }
            var target = Int32(i)
            if case .srv(_, _, _, let name)? = entry.answer?.rdata {
                if let first = firstTarget[name] { target = Int32(first) } else { firstTarget[name] = i }
            }
            glue.append(glueChunk)
            targetGroup.append(target)
            return true
        }

        /// Appends a record's bytes; its group is the first entry with the same record, or its own (whose bytes
        /// then count toward the body).
        private mutating func keep(_ encoded: [UInt8], first: Int?, index i: Int) -> Int32 {
            bytes += encoded
            if let first { return Int32(first) }
            bodySize += encoded.count
            return Int32(i)
        }
    }

    public var instanceCount: Int { answers.count }

    /// Writes the records, starting with instance `rotation`, at `out[offset...]`, which must have `bodySize`
    /// bytes of room. `offset` is also the records' offset from the start of the message. Returns the end offset.
    public func write(rotation: Int, into out: UnsafeMutableRawBufferPointer, at offset: Int) -> Int {
        let n = answers.count
        return write(into: out, at: offset) { k in (rotation &+ k) % n }
    }

    /// The same, with the instances in groups (`ends`: where each group ends, in base order; at most three), each
    /// rotated on its own by its `offsets` entry: nearest-first answers.
    public func write(groups ends: (Int, Int, Int), offsets: (Int, Int, Int), into out: UnsafeMutableRawBufferPointer, at offset: Int) -> Int {
        write(into: out, at: offset) { k in
            if k < ends.0 { return (offsets.0 &+ k) % ends.0 }
            if k < ends.1 { return ends.0 + (offsets.1 &+ k - ends.0) % (ends.1 - ends.0) }
            return ends.1 + (offsets.2 &+ k - ends.1) % (ends.2 - ends.1)
        }
    }

    /// Writes the records in the order `instance(k)` gives (the instance at position k).
    @inline(__always)
    func write(into out: UnsafeMutableRawBufferPointer, at offset: Int, instance: (Int) -> Int) -> Int {
        let n = answers.count
        return withUnsafeTemporaryAllocation(of: Int32.self, capacity: 2 * n) { scratch in
            // scratch[0..<n]: where each target group's SRV target was written (0: not yet);
            // scratch[n..<2n]: 1 when an answer group was written, then reused for glue groups.
            scratch.initialize(repeating: 0)
            var p = offset
            bytes.withUnsafeBytes { src in
                for k in 0..<n {
                    let i = instance(k)
                    let c = answers[i]
                    if c.isEmpty { continue }
                    if dedupeAnswers {
                        if scratch[n + Int(c.group)] != 0 { continue }
                        scratch[n + Int(c.group)] = 1
                    }
                    let t = Int(targetGroup[i])
                    if scratch[t] == 0 { scratch[t] = Int32(p + Self.srvTargetOffset) }
                    let len = Int(c.end - c.start)
                    out.baseAddress!.advanced(by: p).copyMemory(from: src.baseAddress!.advanced(by: Int(c.start)), byteCount: len)
                    p += len
                }
                if glueCount == 0 { return }
                for g in n..<(2 * n) { scratch[g] = 0 }
                for k in 0..<n {
                    let i = instance(k)
                    let c = glue[i]
                    if c.isEmpty || scratch[n + Int(c.group)] != 0 { continue }
                    scratch[n + Int(c.group)] = 1
                    let len = Int(c.end - c.start)
                    out.baseAddress!.advanced(by: p).copyMemory(from: src.baseAddress!.advanced(by: Int(c.start)), byteCount: len)
                    let pointer = 0xC000 | UInt16(scratch[Int(targetGroup[i])])
                    out[p] = UInt8(pointer >> 8)
                    out[p + 1] = UInt8(pointer & 0xFF)
                    p += len
                }
            }
            return p
        }
    }
}
