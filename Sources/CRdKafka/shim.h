#ifndef FINCH_JOBS_CRDKAFKA_SHIM_H
#define FINCH_JOBS_CRDKAFKA_SHIM_H
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

/// rd_kafka_mock_broker_push_request_error_rtts() is variadic, which Swift cannot call:
/// push one (error, rtt) pair at a time.
static inline rd_kafka_resp_err_t
finch_mock_broker_push_request_error_rtt(rd_kafka_mock_cluster_t *mcluster,
                                         int32_t broker_id, int16_t api_key,
                                         rd_kafka_resp_err_t err, int rtt_ms) {
        return rd_kafka_mock_broker_push_request_error_rtts(mcluster, broker_id,
                                                            api_key, 1, err,
                                                            rtt_ms);
}
#endif
