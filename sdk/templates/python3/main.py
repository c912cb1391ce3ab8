"""The {{name}} function.

Color FaaS calls handle(event, context) once per invocation: `event` is the invocation's JSON
arguments (checked against args_schema in colorfaas.json), the return value is the result and
must be JSON-serializable. An exception fails the run. Whatever the function prints is kept as
the run's logs (`colorfaas logs <run_id>`).

context has run_id, function, version, deadline_ms, memory_mb and remaining_ms().
"""


def handle(event, context):
    name = event.get("name") or "world"
    print(f"greeting {name} (run {context.run_id}, {context.remaining_ms()} ms left)")
    return {"message": f"hello, {name}!", "function": context.function}
