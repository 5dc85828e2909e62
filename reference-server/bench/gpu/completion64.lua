-- wrk script: POST a 64-token greedy completion (decode-bound load for tokens/s).
wrk.method = "POST"
wrk.body = '{"prompt": "The quick brown fox", "max_tokens": 64, "temperature": 0}'
wrk.headers["Content-Type"] = "application/json"
