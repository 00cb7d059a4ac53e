//! The OpenAPI 3.1 document of the REST API, served at `/api/v1/openapi.json`. Written by hand
//! beside the routes (a test checks that every API route is described).

use serde_json::{json, Value};

fn error_response(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn job_response(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Job" } } } })
}

fn id_parameter() -> Value {
    json!([{ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } }])
}

/// The document.
pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": { "title": "nimbus", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Jobs on an elastic, queue-driven platform. Errors are JSON `{\"error\": \"...\"}` naming what is wrong." },
        "paths": {
            "/api/v1/jobs": {
                "post": {
                    "summary": "Create a job: atoms or video as JSON, or a video job as a multipart upload of its images (files) with an optional `params` field (VideoParams as JSON, without urls or keys)",
                    "requestBody": { "required": true, "content": {
                        "application/json": { "schema": { "$ref": "#/components/schemas/CreateJob" } },
                        "multipart/form-data": { "schema": { "type": "object", "properties": {
                            "params": { "type": "string", "description": "VideoParams as JSON (frame_seconds, width, height, crossfade_seconds, fps)" },
                            "image": { "type": "array", "items": { "type": "string", "format": "binary" }, "description": "The images in order (any field name; PNG, JPEG, GIF, BMP, WebP)" } } } } } },
                    "responses": { "201": job_response("The job, queued (Location header)"), "400": error_response("Malformed JSON or form, unknown kind, a parameter out of range or an unreadable image (named)"),
                                   "413": error_response("An image or the upload over its limit (named)"), "415": error_response("Neither JSON nor multipart") }
                },
                "get": {
                    "summary": "A page of jobs, newest first; the next page starts after the cursor in the `x-next-cursor` header (and the `Link` header's rel=next), absent on the last page",
                    "parameters": [{ "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000, "default": 50 } },
                                   { "name": "cursor", "in": "query", "schema": { "type": "string", "format": "uuid" }, "description": "The x-next-cursor of the page before" }],
                    "responses": { "200": { "description": "Jobs", "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/Job" } } } },
                                            "headers": { "x-next-cursor": { "schema": { "type": "string", "format": "uuid" } }, "Link": { "schema": { "type": "string" } } } },
                                   "400": error_response("A limit outside 1 to 1000, or a cursor that is not a job id") }
                }
            },
            "/api/v1/jobs/{id}": {
                "get": { "summary": "A job: state, progress, result", "parameters": id_parameter(),
                         "responses": { "200": job_response("The job"), "404": error_response("No such job") } }
            },
            "/api/v1/jobs/{id}/cancel": {
                "post": { "summary": "Cancel a job", "parameters": id_parameter(),
                          "responses": { "200": job_response("The cancelled job"), "404": error_response("No such job"), "409": error_response("The job already ended") } }
            },
            "/api/v1/jobs/{id}/events": {
                "get": { "summary": "Server-sent events of a job: `snapshot` (the job), `progress`, then `result`, `failed` or `cancelled`",
                         "parameters": id_parameter(),
                         "responses": { "200": { "description": "An event stream", "content": { "text/event-stream": {} } }, "404": error_response("No such job") } }
            },
            "/api/v1/jobs/{id}/plane.png": {
                "get": { "summary": "Atoms jobs: heat map of the potential in the z-plane of the minimum", "parameters": id_parameter(),
                         "responses": { "200": { "description": "PNG", "content": { "image/png": {} } }, "404": error_response("No picture (yet)") } }
            },
            "/api/v1/jobs/{id}/video": {
                "get": { "summary": "Video jobs: the MP4, whole or the byte range a `Range: bytes=...` header asks for (one range; several are answered whole)",
                         "parameters": [id_parameter()[0].clone(), { "name": "Range", "in": "header", "schema": { "type": "string", "pattern": "^bytes=" } }],
                         "responses": { "200": { "description": "The whole MP4", "content": { "video/mp4": {} }, "headers": { "Accept-Ranges": { "schema": { "type": "string" } } } },
                                        "206": { "description": "The range asked for", "content": { "video/mp4": {} }, "headers": { "Content-Range": { "schema": { "type": "string" } } } },
                                        "404": error_response("No such job, not a video job, or no video yet (its state is named)"),
                                        "416": error_response("The range lies outside the video (Content-Range: bytes */SIZE)") } }
            },
            "/api/v1/classify": {
                "post": {
                    "summary": "Classify images: one as the body (any image content type, `?name=` for its file name) or several as multipart form data; answers when labelled, or 202 with the job after `wait` seconds",
                    "parameters": [
                        { "name": "wait", "in": "query", "schema": { "type": "number", "minimum": 0, "maximum": 120, "default": 30 } },
                        { "name": "name", "in": "query", "schema": { "type": "string" } }
                    ],
                    "requestBody": { "required": true, "content": { "application/octet-stream": {}, "image/*": {}, "multipart/form-data": {} } },
                    "responses": {
                        "200": { "description": "Each image's top-5 labels, in request order", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Classified" } } } },
                        "202": { "description": "Not labelled yet: the job to poll (Location header)" },
                        "400": error_response("No image, an unreadable or empty image (the file is named)"),
                        "413": error_response("An image over the size or pixel limits (the file is named)"),
                        "422": error_response("An image the worker could not decode (the file is named)"),
                        "503": error_response("No worker of this deployment classifies images (the reason is given)")
                    }
                }
            },
            "/api/v1/fleet": {
                "get": { "summary": "The autoscaler's fleet: policy, instances with state and age, recent decisions with their reasons, instances and queue depths over time",
                         "responses": { "200": { "description": "The fleet as the autoscaler last published it", "content": { "application/json": { "schema": { "type": "object",
                             "properties": { "policy": { "type": "string" }, "queues": { "type": "array", "items": { "type": "string" } }, "updated_ms": { "type": "integer" },
                                             "instances": { "type": "array", "items": { "type": "object", "properties": { "id": { "type": "string" }, "state": { "type": "string" }, "age_s": { "type": "integer" } } } },
                                             "decisions": { "type": "array", "items": { "type": "object", "properties": { "at_ms": { "type": "integer" }, "actions": { "type": "array", "items": { "type": "string" } }, "reason": { "type": "string" }, "errors": { "type": "array", "items": { "type": "string" } } } } },
                                             "samples": { "type": "array", "items": { "type": "object" } }, "last_error": { "type": ["string", "null"] } } } } } },
                                        "404": error_response("No autoscaler has reported to this engine") } }
            },
            "/api/v1/queues": {
                "get": { "summary": "Every queue: depth (visible, in flight, delayed) and its dead-letter queue",
                         "responses": { "200": { "description": "Queues", "content": { "application/json": { "schema": { "type": "array", "items": { "type": "object",
                             "properties": { "name": { "type": "string" }, "visible": { "type": "integer" }, "in_flight": { "type": "integer" }, "delayed": { "type": "integer" },
                                             "dead_letter": { "type": ["string", "null"] }, "max_receives": { "type": ["integer", "null"] } } } } } } } } }
            },
            "/api/v1/queues/{name}/redrive": {
                "post": { "summary": "Move the messages of the queue's dead-letter queue back to it (at most 10,000 a call)",
                          "parameters": [{ "name": "name", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[A-Za-z0-9_-]{1,80}(\\.fifo)?$" } }],
                          "responses": { "200": { "description": "How many were moved, from where, and how many jobs that dead letters had failed run again", "content": { "application/json": { "schema": { "type": "object", "properties": { "moved": { "type": "integer" }, "from": { "type": "string" }, "jobs_reopened": { "type": "integer" } } } } } },
                                         "400": error_response("A bad queue name, or a queue without a dead-letter queue"), "404": error_response("No such queue"),
                                         "409": error_response("The dead-letter queue also takes another queue's messages") } }
            },
            "/api/v1/upload": {
                "post": {
                    "summary": "Seed 004's upload: several images as multipart form data, labels listed per image (as /api/v1/classify)",
                    "requestBody": { "required": true, "content": { "multipart/form-data": {} } },
                    "responses": { "200": { "description": "Labels per image", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Classified" } } } },
                                   "202": { "description": "Not labelled yet: the job to poll" },
                                   "400": error_response("A bad image, named"), "413": error_response("Over a limit, named") }
                }
            },
            "/api/v1/atoms": {
                "post": {
                    "summary": "Upload an atom set: one atom a line, `x y z e`",
                    "requestBody": { "required": true, "content": { "text/plain": { "schema": { "type": "string" } } } },
                    "responses": { "201": { "description": "Stored", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Upload" } } } },
                                   "400": error_response("A malformed line, named"), "413": error_response("Over the upload limit") }
                }
            }
        },
        "components": { "schemas": {
            "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } },
            "CreateJob": { "type": "object", "required": ["kind", "params"], "properties": {
                "kind": { "type": "string", "enum": ["atoms", "video"], "description": "classify jobs are created by POST /api/v1/classify" },
                "params": { "oneOf": [{ "$ref": "#/components/schemas/AtomsParams" }, { "$ref": "#/components/schemas/VideoParams" }] } } },
            "VideoParams": { "type": "object", "additionalProperties": false, "description": "Give urls or keys (not both); 1 to 500 images, at most 3600 s of video", "properties": {
                "urls": { "type": "array", "maxItems": 500, "items": { "type": "string", "format": "uri", "maxLength": 2048 }, "description": "http(s) image URLs; the worker fetches only from hosts on its --allow-fetch list" },
                "keys": { "type": "array", "maxItems": 500, "items": { "type": "string", "pattern": "^uploads/", "maxLength": 512 }, "description": "Blob keys of uploaded images" },
                "frame_seconds": { "type": "number", "minimum": 0.04, "maximum": 60, "default": 1 },
                "width": { "type": "integer", "minimum": 16, "maximum": 1920, "multipleOf": 2, "default": 640 },
                "height": { "type": "integer", "minimum": 16, "maximum": 1080, "multipleOf": 2, "default": 480 },
                "crossfade_seconds": { "type": "number", "minimum": 0, "default": 0, "description": "Less than frame_seconds" },
                "fps": { "type": "integer", "minimum": 1, "maximum": 60, "default": 25, "description": "Output frame rate when cross-fading (without, one frame per image)" } } },
            "VideoResult": { "type": "object", "description": "A video job's result", "properties": {
                "video": { "type": "string" }, "key": { "type": "string" }, "bytes": { "type": "integer" }, "images": { "type": "integer" }, "frames": { "type": "integer" },
                "seconds": { "type": "number" }, "width": { "type": "integer" }, "height": { "type": "integer" },
                "fetch_ms": { "type": "integer" }, "normalize_ms": { "type": "integer" }, "encode_ms": { "type": "integer" } } },
            "AtomsParams": { "type": "object", "required": ["grid_size"], "additionalProperties": false, "properties": {
                "grid_size": { "type": "integer", "minimum": 1 },
                "atom_count": { "type": "integer", "minimum": 1, "description": "Atoms to generate (omit with atoms_key)" },
                "seed": { "type": "integer", "minimum": 0 },
                "atoms_key": { "type": "string", "description": "From POST /api/v1/atoms" } } },
            "Classified": { "type": "object", "properties": {
                "job_id": { "type": "string" },
                "images": { "type": "array", "items": { "type": "object", "properties": {
                    "index": { "type": "integer" }, "name": { "type": "string" }, "error": { "type": "string" },
                    "labels": { "type": "array", "items": { "type": "object", "properties": {
                        "label": { "type": "string" }, "score": { "type": "number" }, "class": { "type": "integer" } } } } } } } } },
            "Upload": { "type": "object", "properties": { "atoms_key": { "type": "string" }, "atom_count": { "type": "integer" } } },
            "Job": { "type": "object", "properties": {
                "id": { "type": "string", "format": "uuid" }, "kind": { "type": "string" }, "params": { "type": "object" },
                "state": { "type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"] },
                "progress": { "type": "object", "properties": { "done": { "type": "integer" }, "total": { "type": "integer" } } },
                "result": { "type": "object" }, "error": { "type": "string" },
                "created_ms": { "type": "integer" }, "updated_ms": { "type": "integer" } } }
        } }
    })
}
