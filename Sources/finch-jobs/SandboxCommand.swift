import ArgumentParser
import FinchSandbox
import Foundation
import JobsWorker
import Logging
import ServiceLifecycle

/// `finch-jobs sandbox`: a local Finch API with Finch's semantics.
struct SandboxCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sandbox",
        abstract: "Run a local Finch API (POST/GET /jobs/automated) with Finch's quota and concurrency rules, plus fault injection.",
        discussion: "Prints url=<base URL> as the first line of standard output. GET /sandbox/stats counts calls by status and connection; POST /sandbox/reset forgets everything; POST /sandbox/faults changes faults at run time."
    )

    @Option(help: "Port to listen on; 0 picks a free one. (env FINCH_JOBS_PORT)")
    var port: Int = 4010

    @Option(help: "Address to listen on (0.0.0.0 in containers). (env FINCH_JOBS_HOST)")
    var host: String = "127.0.0.1"

    @Option(help: "JSON file {\"<connection_id>\": \"<access_token>\"}: the tokens the sandbox accepts. (env FINCH_JOBS_TOKENS_FILE)")
    var tokensFile: String

    @Option(help: "Forced data_sync_all refreshes per connection per window. (env FINCH_JOBS_ALLOWED_REFRESHES)")
    var allowedRefreshes: Int = 1

    @Option(help: "The fixed quota window, starting at a connection's first refresh. (env FINCH_JOBS_WINDOW)")
    var window: DurationArgument = DurationArgument(.seconds(3_600))

    @Option(help: "How long a job runs before its terminal status. (env FINCH_JOBS_JOB_DURATION)")
    var jobDuration: DurationArgument = DurationArgument(.seconds(10))

    @Option(help: "Terminal status of jobs: complete, error, reauth_error or permissions_error. (env FINCH_JOBS_JOB_OUTCOME)")
    var jobOutcome: String = "complete"

    @Flag(help: "Let the refresh quota limit w4_form_employee_sync too (undocumented by Finch). (env FINCH_JOBS_QUOTA_LIMITS_W4)")
    var quotaLimitsW4: Bool = false

    @Option(help: "Latency added to every enqueue call. (env FINCH_JOBS_LATENCY)")
    var latency: DurationArgument = DurationArgument(.zero)

    @Option(help: "Fraction of enqueue calls answered 500. (env FINCH_JOBS_FAILURE_RATE)")
    var failureRate: Double = 0

    @Option(help: "Fraction of enqueue calls answered 429 without retry_at (application rate limit). (env FINCH_JOBS_APPLICATION_RATE_LIMIT_RATE)")
    var applicationRateLimitRate: Double = 0

    @Option(help: "Fraction of enqueue calls whose connection is dropped unanswered. (env FINCH_JOBS_DROP_RATE)")
    var dropRate: Double = 0

    @Option(help: "Finch's application limit per endpoint, N/WINDOW in a rolling window (429 finch_application_rl), or off; Finch publishes no figure for /jobs/automated. (env FINCH_JOBS_APP_RATE_LIMIT)")
    var appRateLimit: RateLimitArgument = RateLimitArgument(nil)

    @Option(help: "Finch's per-IP limit over its routes, N/WINDOW in a rolling window (429 finch_api_ip_rl), or off; Finch documents 1000 per 5 minutes. (env FINCH_JOBS_IP_RATE_LIMIT)")
    var ipRateLimit: RateLimitArgument = RateLimitArgument(.finchIPLimit)

    @Option(help: "How long an address stays blocked after passing the IP limit. (env FINCH_JOBS_IP_BLOCK)")
    var ipBlock: DurationArgument = DurationArgument(SandboxRateLimit.finchIPBlock)

    @Flag(help: "Send Retry-After (whole seconds) with the application and IP limit 429s. (env FINCH_JOBS_RETRY_AFTER_HEADER)")
    var retryAfterHeader: Bool = false

    @Option(help: "Where to send job completion webhooks (job.<type>.completed), signed as Finch signs them. (env FINCH_JOBS_WEBHOOK_URL)")
    var webhookURL: String?

    @Option(help: "The webhook secret (base64) that signs them. (env FINCH_JOBS_WEBHOOK_SECRET)")
    var webhookSecret: String?

    @Option(help: "A file holding the webhook secret, instead of --webhook-secret. (env FINCH_JOBS_WEBHOOK_SECRET_FILE)")
    var webhookSecretFile: String?

    @Option(help: "Fraction of webhooks never sent, as if lost. (env FINCH_JOBS_WEBHOOK_DROP_RATE)")
    var webhookDropRate: Double = 0

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        guard (0...65_535).contains(port) else { throw ValidationError("--port must be between 0 and 65535, not \(port).") }
        guard allowedRefreshes >= 0 else { throw ValidationError("--allowed-refreshes must not be negative.") }
        guard window.duration > .zero else { throw ValidationError("--window must be longer than zero.") }
        guard ["complete", "error", "reauth_error", "permissions_error"].contains(jobOutcome) else {
            throw ValidationError("--job-outcome must be complete, error, reauth_error or permissions_error, not \"\(jobOutcome)\".")
        }
        guard (0...1).contains(webhookDropRate) else { throw ValidationError("--webhook-drop-rate must be between 0 and 1, not \(webhookDropRate).") }
        if webhookURL != nil || webhookSecret != nil || webhookSecretFile != nil {
            guard let webhookURL, let url = URL(string: webhookURL), ["http", "https"].contains(url.scheme ?? "") else {
                throw ValidationError("--webhook-url must be an http(s) URL when a webhook secret is given.")
            }
            guard let secret = try resolvedWebhookSecret(), Data(base64Encoded: secret) != nil else {
                throw ValidationError("--webhook-secret (or --webhook-secret-file) must be base64 when --webhook-url is given.")
            }
        }
        guard ipBlock.duration > .zero else { throw ValidationError("--ip-block must be longer than zero.") }
        for (name, rate) in [("--failure-rate", failureRate), ("--application-rate-limit-rate", applicationRateLimitRate), ("--drop-rate", dropRate)] {
            guard (0...1).contains(rate) else { throw ValidationError("\(name) must be between 0 and 1, not \(rate).") }
        }
    }

    var settings: SandboxSettings {
        SandboxSettings(
            allowedRefreshes: allowedRefreshes, window: window.duration, jobDuration: jobDuration.duration,
            jobOutcome: jobOutcome, quotaLimitsW4: quotaLimitsW4,
            applicationRateLimit: appRateLimit.limit, ipRateLimit: ipRateLimit.limit, ipBlock: ipBlock.duration,
            retryAfterHeader: retryAfterHeader,
            faults: SandboxFaults(
                latencyMilliseconds: Int(latency.duration.timeInterval * 1_000),
                failureRate: failureRate, applicationRateLimitRate: applicationRateLimitRate, dropRate: dropRate
            )
        )
    }

    /// `--webhook-secret`, else the first line of `--webhook-secret-file`.
    func resolvedWebhookSecret() throws -> String? {
        if let webhookSecret { return webhookSecret }
        guard let webhookSecretFile else { return nil }
        guard let text = try? String(contentsOfFile: webhookSecretFile, encoding: .utf8) else {
            throw ValidationError("--webhook-secret-file \(webhookSecretFile) cannot be read.")
        }
        return text.split(whereSeparator: \.isNewline).first.map { $0.trimmingCharacters(in: .whitespaces) }
    }

    func run() async throws {
        let logger = logging.bootstrap()
        let tokens = try TokensFile.load(path: tokensFile)
        var webhooks: SandboxWebhooks?
        if let webhookURL, let webhookSecret = try resolvedWebhookSecret() {
            webhooks = try SandboxWebhooks(url: webhookURL, secret: webhookSecret, dropRate: webhookDropRate, logger: logger)
        }
        let sandbox = FinchSandbox(settings: settings, tokens: tokens, logger: logger, webhooks: webhooks)
        let host = self.host
        let app = SandboxServer.application(sandbox: sandbox, host: host, port: port, logger: logger) { port in
            let shown = host == "0.0.0.0" ? "127.0.0.1" : host
            StandardOutput.line("url=http://\(shown):\(port)")
            logger.info("Finch sandbox listening", metadata: ["port": "\(port)", "connections": "\(tokens.count)"])
        }
        let services: [any Service] = [app] + (webhooks.map { [$0] } ?? [])
        let group = ServiceGroup(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await group.run()
    }
}
