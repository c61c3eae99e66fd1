"""infergw's private descriptor pool.

tritonclient (and KServe, TF Serving clients) register ``inference.*`` messages in
protobuf's default pool; registering ours there too would clash. Our generated
modules add their files here instead. Reflection is served from this pool.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
